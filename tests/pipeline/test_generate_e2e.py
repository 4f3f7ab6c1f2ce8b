"""`mvrag generate` end to end with the real pipeline and folder retrieval on the bundled tiny release."""

import json

import numpy as np
import pytest
from PIL import Image

from mvrag_jax.cli import main
from tests.conftest import TINY_RELEASE



def test_generate_writes_views_grid_and_record_then_a_rerun_skips(tmp_path, capsys):
    images = tmp_path / "car_images"
    images.mkdir()
    Image.new("RGB", (40, 30), "red").save(images / "a.png")
    Image.new("RGB", (28, 44), "blue").save(images / "b.png")
    out = tmp_path / "out"
    args = ["mvrag", "generate", "--release", str(TINY_RELEASE), "--prompt", "a red car", "--retrieved", str(images),
            "--steps", "2", "--prior_steps", "1", "--out", str(out), "--compile_cache_dir", "none"]
    assert main(args) == 0
    summary = json.loads(capsys.readouterr().out.splitlines()[-1])
    assert (summary["objects"], summary["generated"], summary["skipped"]) == (1, 1, 0)

    [folder] = list(out.iterdir())
    assert folder.name.startswith("00000_a-red-car_") and folder.name.endswith("_s0")
    assert sorted(p.name for p in folder.iterdir()) == ["grid.png", "record.json"] + [f"view_{i}.png" for i in range(4)]
    view = np.asarray(Image.open(folder / "view_0.png"))
    size = view.shape[0]
    assert view.shape == (size, size, 3) and view.dtype == np.uint8
    assert np.asarray(Image.open(folder / "grid.png")).shape == (size, 2 * size + 4 + 4 * size, 3)
    record = json.loads((folder / "record.json").read_text())
    assert record["prompt"] == "a red car" and record["seed"] == 0
    assert record["settings"] == {"steps": 2, "prior_steps": 1, "guidance": 5.0, "elevation": 15.0, "dtype": "fp32",
                                  "use_prior": True, "fusion_weight": None, "k": 4}
    assert [f["path"] for f in record["retrieval"]["files"]] == [str(images / "a.png"), str(images / "b.png")]
    assert not record["retrieval"]["text_only"]
    assert isinstance(record["fusion_weight"], float) and record["fusion_weight"] >= 0
    assert {"retrieve", "encode", "prior", "fusion", "main", "decode", "compile"} <= set(record["timings"])
    assert record["timings"]["compile"] > 0 and record["model"] == {"release": str(TINY_RELEASE)}

    written = (folder / "record.json").stat().st_mtime_ns
    assert main(args) == 0  # everything is complete: nothing is loaded or generated
    summary = json.loads(capsys.readouterr().out.splitlines()[-1])
    assert (summary["generated"], summary["skipped"]) == (0, 1)
    assert (folder / "record.json").stat().st_mtime_ns == written


def test_empty_folder_with_require_retrieval_is_an_error(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    assert main(["mvrag", "generate", "--release", str(TINY_RELEASE), "--prompt", "a red car", "--retrieved",
                 str(tmp_path / "empty"), "--require-retrieval", "--steps", "1", "--prior_steps", "1",
                 "--out", str(tmp_path / "out"), "--compile_cache_dir", "none"]) == 2
    err = capsys.readouterr().err
    assert "holds no image file" in err and "--require_retrieval" in err and "Traceback" not in err


def test_relevance_fallback_generates_the_text_only_views_of_the_same_seed(tmp_path, capsys):
    from tests.retrieval.conftest import three_caption_index
    index = three_caption_index(tmp_path / "data")  # "a red dragon" matches only "red": similarities 0.18, 0.16
    (tmp_path / "empty").mkdir()
    prompts = tmp_path / "prompts.jsonl"  # the same prompt twice: through the index, and text-only (empty folder)
    prompts.write_text('a red dragon\n{"prompt": "a red dragon", "retrieved": "empty"}\n')
    out = tmp_path / "out"
    assert main(["mvrag", "generate", "--release", str(TINY_RELEASE), "--prompts", str(prompts), "--index",
                 str(index), "--relevance-threshold", "0.5", "--steps", "2", "--prior_steps", "1", "--out", str(out),
                 "--compile_cache_dir", "none"]) == 0
    assert json.loads(capsys.readouterr().out.splitlines()[-1])["text_only"] == 2
    fallback, text_only = sorted(out.iterdir())
    record = json.loads((fallback / "record.json").read_text())
    assert record["retrieval"]["source"] == f"index:{index}" and record["retrieval"]["text_only"]
    relevance = record["retrieval"]["relevance"]
    assert relevance["fell_back"] and relevance["kept"] == [] and len(relevance["dropped"]) == 2
    assert record["fusion_weight"] is None and record["settings"]["relevance_threshold"] == 0.5
    assert json.loads((text_only / "record.json").read_text())["retrieval"]["relevance"] is None  # empty folder
    for i in range(4):  # retrieval attention off: the base model's views, bit for bit
        np.testing.assert_array_equal(np.asarray(Image.open(fallback / f"view_{i}.png")),
                                      np.asarray(Image.open(text_only / f"view_{i}.png")))
