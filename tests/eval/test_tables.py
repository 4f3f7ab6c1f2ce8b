"""IND-Eval (eval/ind_eval.py), `mvrag eval --tables` (eval/tables.py) and `--study retrievers` (eval/retrievers.py)
end to end on the tiny encoders."""

import json
import pathlib

import numpy as np
import pytest
from PIL import Image

from mvrag_jax.cli import main
from mvrag_jax.eval import ind_eval, retrievers, tables
from tests.eval.test_ir import FIXTURE as IR_TINY
from tests.eval.test_reconstruction import FIXTURE as LPIPS_TINY
from tests.eval.test_siglip import FIXTURE as SIGLIP_TINY
from tests.eval.tiny_models import COLOURS, blob_image

NO_CACHE = ["--compile_cache_dir", "none"]


def _save(path: pathlib.Path, image: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(image).save(path)


@pytest.fixture(scope="module")
def ind(tmp_path_factory):
    """3 objects with 4 ground-truth views; o1 has masks. Ours: o0 exact, o1 exact inside its mask only, o2 another
    colour. A baseline: every object another colour."""
    root = tmp_path_factory.mktemp("ind")
    data, ours, base = root / "ind", root / "ours", root / "base"
    for i in range(3):
        obj = data / f"o{i}"
        obj.mkdir(parents=True)
        (obj / "prompt.txt").write_text(f"a {['red', 'blue', 'green'][i]} ball\n")
        for v in range(4):
            gt = blob_image(COLOURS[i], 32, 10 * i + v)
            _save(obj / "views" / f"view_{v}.png", gt)
            mine = gt.copy()
            if i == 1:
                mask = np.zeros((32, 32), bool)
                mask[8:24, 8:24] = True
                _save(obj / "masks" / f"view_{v}.png", (mask * 255).astype(np.uint8))
                mine[~mask] = 0   # differs only outside the mask
            if i == 2:
                mine = blob_image(COLOURS[3], 32, 10 * i + v)
            _save(ours / f"o{i}" / f"view_{v}.png", mine)
            _save(base / f"o{i}" / f"view_{v}.png", blob_image(COLOURS[(i + 1) % 5], 32, 99 + v))
        _save(obj / "retrieved" / "r0.png", blob_image(COLOURS[i], 40, 7 + i))
    return {"data": data, "ours": ours, "base": base}


def test_ind_eval_scores_match_what_was_drawn(ind):
    objects, skipped = ind_eval.read_ind_eval(ind["data"])
    assert [o.object_id for o in objects] == ["o0", "o1", "o2"] and not skipped
    assert objects[0].masks is None and objects[1].masks is not None and len(objects[1].retrieved) == 1
    from mvrag_jax.eval import reconstruction
    scorers = ind_eval.IndScorers(reconstruction.lpips_metric(*reconstruction.load_lpips(LPIPS_TINY)), None, None,
                                  {"clip_text": "none", "siglip_text": "none"})
    generated = {p.name: np.stack([np.asarray(Image.open(p / f"view_{v}.png")) for v in range(4)])
                 for p in ind["ours"].iterdir()}
    rows, summary, _ = ind_eval.score_ind(objects, generated, scorers, show_progress=False)
    by = {r["object_id"]: r for r in rows}
    for exact in ("o0", "o1"):  # o1 differs only outside its mask: masked, it is exact
        assert by[exact]["psnr"] == 100.0 and by[exact]["ssim"] == pytest.approx(1.0)
        assert by[exact]["lpips"] == pytest.approx(0.0, abs=1e-6)
    assert by["o1"]["masked"] and not by["o0"]["masked"]
    assert by["o2"]["psnr"] < 30 and by["o2"]["ssim"] < 0.9 and by["o2"]["lpips"] > 0
    assert summary["psnr"]["n"] == 3 and summary["clip_text"]["missing"] == "none"


def test_tables_cli_writes_both_tables(eval_inputs, ind, tmp_path):
    out = tmp_path / "tables"
    argv = ["mvrag", "eval", "--tables", "--dataset", str(eval_inputs["dataset"]), "--images",
            str(eval_inputs["views"]), "--baseline", f"other={eval_inputs['views']}", "--ind_eval", str(ind["data"]),
            "--ind_images", str(ind["ours"]), "--ind_baseline", f"MVDream={ind['base']}",
            "--clip_model", str(eval_inputs["clip"]), "--dinov2", str(eval_inputs["dinov2"]), "--ir", str(IR_TINY),
            "--lpips", str(LPIPS_TINY), "--siglip", str(SIGLIP_TINY), "--out", str(out)] + NO_CACHE
    assert main(argv) == 0
    result = json.loads((out / "tables.json").read_text())
    t1, t3 = result["table1"], result["table3"]
    assert set(t1) == {"ours", "other"}
    for m in ("clip", "dinov2", "ir"):  # same views, same encoders: same numbers
        assert t1["ours"]["views"][m]["mean"] == pytest.approx(t1["other"]["views"][m]["mean"])
        assert t1["ours"]["views"][m]["missing"] is None
    assert "--inception" in t1["ours"]["views"]["fid"]["missing"]
    assert "LGM" in t1["ours"]["rerendered"]["clip"]["missing"]
    assert t3["ours"]["metrics"]["psnr"]["mean"] > t3["MVDream"]["metrics"]["psnr"]["mean"]
    assert t3["ours"]["metrics"]["lpips"]["mean"] < t3["MVDream"]["metrics"]["lpips"]["mean"]
    for m in ("clip_text", "siglip_text"):
        assert t3["ours"]["metrics"][m]["missing"] is None and t3["ours"]["metrics"][m]["n"] == 3
    md = (out / "tables.md").read_text()
    assert "| paper: MV-RAG | 71.77 | 50.19 | 67.41 | 54.79 | 13.20 | 74.28 |" in md
    assert "| paper: MVDream | 16.95 | 0.717 | 0.363 | 64.25 | 34.81 | 50 |" in md
    assert (out / "table1.png").is_file() and (out / "table3.png").is_file()
    assert (out / "methods" / "other" / "metrics.json").is_file()


def test_tables_rerender_hook_fills_the_right_half(eval_inputs, tmp_path):
    calls = []

    def rerender(views, out):  # a stand-in re-renderer: the views themselves, copied
        import shutil
        calls.append(views)
        shutil.copytree(views, out)
        return out
    out = tables.run_tables(out=str(tmp_path / "t"), dataset=str(eval_inputs["dataset"]), ours=str(eval_inputs["views"]),
                            baselines={}, dinov2=str(eval_inputs["dinov2"]), rerender=rerender)
    t1 = json.loads((out / "tables.json").read_text())["table1"]["ours"]
    assert calls and t1["rerendered"]["dinov2"]["mean"] == pytest.approx(t1["views"]["dinov2"]["mean"])


def test_bad_named_flags():
    with pytest.raises(ValueError, match="NAME=DIR"):
        tables.parse_named(["nodir"], "baseline")
    with pytest.raises(ValueError, match="twice"):
        tables.parse_named(["a=x", "a=y"], "baseline")


def test_retriever_study(eval_inputs, tmp_path, capsys):
    root = tmp_path / "coll"
    lines, queries = [], []
    words = ["red", "blue", "green", "yellow", "purple"]
    for q in range(2):
        queries.append({"prompt_id": f"q{q}", "prompt": f"a {words[q]} ball"})
        for j in range(5):
            name = f"q{q}_{j}.png"
            _save(root / name, blob_image(COLOURS[q], 24, 50 * q + j))
            lines.append({"image": name, "caption": f"a {words[q]} ball photo", "prompt_id": f"q{q}"})
    for j in range(6):  # distractors: other colours, other words
        _save(root / f"d{j}.png", blob_image(COLOURS[2 + j % 3], 24, 500 + j))
        lines.append({"image": f"d{j}.png", "caption": f"a {words[2 + j % 3]} cube", "prompt_id": None})
    (root / "collection.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines))
    (root / "queries.jsonl").write_text("".join(json.dumps(x) + "\n" for x in queries))
    out = tmp_path / "study"
    assert main(["mvrag", "eval", "--study", "retrievers", "--collection", str(root / "collection.jsonl"),
                 "--clip_model", str(eval_inputs["clip"]), "--siglip", str(SIGLIP_TINY), "--out", str(out)]
                + NO_CACHE) == 0
    result = json.loads((out / "retrievers.json").read_text())["precision_at_5"]
    assert result["bm25"]["mean"] == 1.0  # the colour word picks exactly the query's 5 images
    for name in ("clip_text_image", "clip_text_text", "siglip_text_image"):
        assert 0.0 <= result[name]["mean"] <= 1.0 and result[name]["n"] == 2
    assert "0.8522" in (out / "retrievers.md").read_text()
    assert retrievers.precision_at(np.array([3.0, 2, 1, 0]), np.array([1, 0, 1, 0]), k=2) == 0.5
    (root / "queries.jsonl").write_text(json.dumps({"prompt_id": "zz", "prompt": "x"}) + "\n")
    assert main(["mvrag", "eval", "--study", "retrievers", "--collection", str(root / "collection.jsonl"),
                 "--out", str(tmp_path / "s2")] + NO_CACHE) == 2
    assert "zz" in capsys.readouterr().err
