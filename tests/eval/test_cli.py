"""`mvrag eval --images` end to end on tiny encoders; missing encoders; user errors."""

import csv
import json

from mvrag_jax.cli import main
from tests.eval.conftest import MISMATCH
from tests.eval.test_ir import FIXTURE as IR_TINY

NO_CACHE = ["--compile_cache_dir", "none"]
ENTRY_KEYS = {"mean", "n", "ci95", "missing"}


def test_eval_images_end_to_end(eval_inputs, tmp_path, capsys):
    out = tmp_path / "out"
    argv = ["mvrag", "eval", "--images", str(eval_inputs["views"]), "--dataset", str(eval_inputs["dataset"]),
            "--out", str(out), "--clip_model", str(eval_inputs["clip"]), "--dinov2", str(eval_inputs["dinov2"]),
            "--inception", str(eval_inputs["inception"]), "--ir", str(IR_TINY)] + NO_CACHE
    assert main(argv) == 0
    assert f"wrote {out}" in capsys.readouterr().out
    result = json.loads((out / "metrics.json").read_text())
    m = result["metrics"]
    assert set(m) == {"clip", "dinov2", "ir", "consistency", "fid", "inception_score"}
    assert all(ENTRY_KEYS <= set(entry) for entry in m.values())
    for name in ("clip", "dinov2", "ir", "consistency"):
        assert m[name]["missing"] is None and m[name]["n"] == 3 and -100 <= m[name]["mean"] <= 100
        low, high = m[name]["ci95"]
        assert low <= m[name]["mean"] <= high
    assert m["fid"]["n"] == 12 and m["fid"]["n_reference"] == 6 and m["fid"]["mean"] >= 0
    assert 1.0 - 1e-6 <= m["inception_score"]["mean"] <= 1008
    assert result["split_rules"] == {"reference/ folder": 3} and result["samples"] == 3
    rows = list(csv.DictReader(open(out / "per_sample.csv")))
    assert [r["prompt_id"] for r in rows] == ["p0", "p1", "p2"]
    worst = min(rows, key=lambda r: float(r["dinov2"]))
    assert worst["prompt_id"] == f"p{MISMATCH}"  # the views of another prompt's colour score lowest
    report = (out / "report.md").read_text()
    assert "| metric | ours | 95 % CI | n |" in report and "| FID (lower is better) |" in report
    assert "| IR (GUIE) sim x100 (higher is better) |" in report and "missing" not in report
    assert result["references_segmented"] == 0 and result["references"] == 6
    assert "0 of 6 references are segmented (masks/); the rest keep their backgrounds" in report
    assert {"best_worst.png", "histograms.png", "per_sample.jsonl"} <= {p.name for p in out.iterdir()}
    assert main(argv) == 2 and "--overwrite" in capsys.readouterr().err  # never clobbers an earlier result


def test_metrics_without_weights_are_missing_not_numbers(eval_inputs, tmp_path):
    out = tmp_path / "out"
    assert main(["mvrag", "eval", "--images", str(eval_inputs["views"]), "--dataset", str(eval_inputs["dataset"]),
                 "--out", str(out), "--dinov2", str(eval_inputs["dinov2"])] + NO_CACHE) == 0
    m = json.loads((out / "metrics.json").read_text())["metrics"]
    assert m["dinov2"]["mean"] is not None
    for name, word in (("clip", "--clip_model"), ("fid", "--inception"), ("inception_score", "--inception"),
                       ("ir", "--ir")):
        assert m[name]["mean"] is None and m[name]["n"] == 0 and word in m[name]["missing"]


def test_unknown_prompt_folder_is_a_user_error(eval_inputs, tmp_path, capsys):
    views = tmp_path / "views"
    (views / "not_a_prompt").mkdir(parents=True)
    assert main(["mvrag", "eval", "--images", str(views), "--dataset", str(eval_inputs["dataset"]),
                 "--out", str(tmp_path / "o")] + NO_CACHE) == 2
    err = capsys.readouterr().err
    assert err.startswith("mvrag eval: error:") and "not_a_prompt" in err and not (tmp_path / "o").exists()
    assert main(["mvrag", "eval", "--dataset", str(eval_inputs["dataset"]), "--out", str(tmp_path / "o")]
                + NO_CACHE) == 2
    assert "exactly one of --images" in capsys.readouterr().err
