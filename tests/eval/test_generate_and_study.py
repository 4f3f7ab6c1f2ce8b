"""`mvrag eval --ckpt` and `mvrag eval --study retrieval` on the converted tiny release (2 DDIM steps)."""

import json

import numpy as np
import pytest

from mvrag_jax.cli import main
from mvrag_jax.eval import study
from mvrag_jax.eval.dataset import read_folder

NO_CACHE = ["--compile_cache_dir", "none"]


def test_study_conditions(eval_inputs):
    data = read_folder(eval_inputs["dataset"])
    correct = study.retrievals(data, "correct", 1)
    shuffled = study.retrievals(data, "shuffled", 1)
    noisy = study.retrievals(data, "noise", 1)
    assert [len(r) for r in correct] == [1, 1, 1]
    assert all(np.array_equal(shuffled[i][0], correct[(i + 1) % 3][0]) for i in range(3))
    diff = np.abs(noisy[0][0].astype(int) - correct[0][0].astype(int))
    assert noisy[0][0].dtype == np.uint8 and 20 < diff.mean() < 80  # sigma 64 noise, clipped
    assert np.array_equal(study.retrievals(data, "noise", 1)[0][0], noisy[0][0])  # fixed seed


def _common(eval_inputs):
    return ["--dataset", str(eval_inputs["dataset"]), "--steps", "2"]  # DINOv2: the checkpoint's own


def test_eval_ckpt_generates_then_scores(eval_inputs, tiny_ckpt, tmp_path):
    out = tmp_path / "ckpt_eval"
    common = _common(eval_inputs)
    assert main(["mvrag", "eval", "--ckpt", str(tiny_ckpt), "--out", str(out), "--k", "2"] + common + NO_CACHE) == 0
    result = json.loads((out / "metrics.json").read_text())
    assert result["samples"] == 3 and result["metrics"]["dinov2"]["n"] == 3  # the checkpoint's own DINOv2
    assert {"main", "decode", "compile", "score"} <= set(result["timings"])
    assert all(0 <= r["fusion_weight"] for r in map(json.loads, open(out / "per_sample.jsonl")))
    assert sorted(p.name for p in (out / "views" / "p0").iterdir())[:2] == ["meta.json", "view_0.png"]
    assert (out / "fusion_weight_vs_score.png").is_file()


# 5 generation runs of the tiny model: ~75 s of CPU; in the default suite, so CI runs the study the README documents
def test_retrieval_study(eval_inputs, tiny_ckpt, tmp_path):
    out, common = tmp_path / "study", _common(eval_inputs)
    assert main(["mvrag", "eval", "--study", "retrieval", "--ckpt", str(tiny_ckpt), "--out", str(out), "--ks", "0,1"]
                + common + NO_CACHE) == 0
    table = json.loads((out / "study.json").read_text())["conditions"]
    assert set(table) == {"correct", "shuffled", "noise"}
    assert table["correct"]["0"] == table["noise"]["0"] and table["correct"]["0"]["fusion_weight"] is None
    assert all(table[c]["1"]["fusion_weight"] is not None for c in table)
    assert table["correct"]["1"]["dinov2"] != table["shuffled"]["1"]["dinov2"]
    assert (out / "study.md").is_file() and (out / "runs" / "shuffled_k1" / "metrics.json").is_file()
