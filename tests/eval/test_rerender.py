"""mvrag_jax/eval/rerender.py: `mvrag eval --rerender --lgm` scores LGM re-renders beside the 4 views."""

import json

from mvrag_jax.cli import main
from tests.conftest import REFERENCE

TINY_LGM = REFERENCE / "lgm_tiny" / "model_fp16.safetensors"


def test_eval_rerender_adds_the_rerendered_columns(eval_inputs, tmp_path, capsys):
    out = tmp_path / "out"
    assert main(["mvrag", "eval", "--images", str(eval_inputs["views"]), "--dataset", str(eval_inputs["dataset"]),
                 "--out", str(out), "--dinov2", str(eval_inputs["dinov2"]), "--rerender", "--lgm", str(TINY_LGM),
                 "--lgm-input-size", "16", "--rerender-size", "32", "--compile-cache-dir", "none"]) == 0
    result = json.loads((out / "metrics.json").read_text())
    rerendered = result["rerendered"]
    assert rerendered["samples"] == result["samples"] == 3 and rerendered["seconds"] > 0
    dino = rerendered["metrics"]["dinov2"]
    assert dino["missing"] is None and dino["n"] == 3 and dino["mean"] != result["metrics"]["dinov2"]["mean"]
    assert "--clip_model" in rerendered["metrics"]["clip"]["missing"]
    assert len(list((out / "rerendered" / "p0").glob("view_*.png"))) == 18
    assert "## Re-rendered" in (out / "report.md").read_text()


def test_rerender_needs_lgm(eval_inputs, tmp_path, capsys):
    assert main(["mvrag", "eval", "--images", str(eval_inputs["views"]), "--dataset", str(eval_inputs["dataset"]),
                 "--out", str(tmp_path / "o"), "--rerender", "--compile-cache-dir", "none"]) == 2
    assert "--rerender needs --lgm" in capsys.readouterr().err


def test_tables_rerender_fills_the_rerendered_columns(eval_inputs, tmp_path, capsys):
    """--tables --rerender: Table 1's right half is scored from the LGM re-renders instead of reported missing."""
    out = tmp_path / "tables"
    assert main(["mvrag", "eval", "--tables", "--images", str(eval_inputs["views"]), "--dataset",
                 str(eval_inputs["dataset"]), "--out", str(out), "--dinov2", str(eval_inputs["dinov2"]), "--rerender",
                 "--lgm", str(TINY_LGM), "--lgm-input-size", "16", "--rerender-size", "32",
                 "--compile-cache-dir", "none"]) == 0
    rendered = sorted((out / "rerendered").rglob("view_*.png"))
    assert len(rendered) == 3 * 18
    table1 = json.loads((out / "tables.json").read_text())["table1"]
    assert table1 and all(row["rerendered"]["dinov2"]["missing"] is None and row["rerendered"]["dinov2"]["n"] == 3
                          for row in table1.values())
