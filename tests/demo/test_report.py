"""The demo's report from a small set of generated outputs (renders written as `mvrag generate` writes objects)."""

import json

import numpy as np
import pytest
from PIL import Image

from mvrag_jax.demo import report
from tests.demo.test_score import render_views

CONCEPTS = {"dax": ("blue", "torus"), "wug": ("red", "cone")}


def _object(run, name, prompt, colour, shape, seed, fusion_weight=None, retrieved=()):
    folder = run / name
    folder.mkdir(parents=True)
    for i, view in enumerate(render_views(colour, shape, np.random.default_rng(seed))):
        Image.fromarray(view).save(folder / f"view_{i}.png")
    record = {"prompt": prompt, "settings": {"elevation": 15.0}, "fusion_weight": fusion_weight,
              "retrieval": {"text_only": not retrieved, "files": [{"path": str(p)} for p in retrieved]}}
    (folder / "record.json").write_text(json.dumps(record))


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("generated")
    hit = root / "hit.png"
    Image.fromarray(render_views("blue", "torus", np.random.default_rng(9))[0]).save(hit)
    retrieval, text_only = root / "retrieval", root / "text_only"
    _object(retrieval, "0", "a red cube", "red", "cube", 0, 0.9, [hit])
    _object(retrieval, "1", "a green sphere", "green", "cube", 1, 0.7, [hit])       # shape wrong
    _object(retrieval, "2", "a dax", "blue", "torus", 2, 0.5, [hit])
    _object(retrieval, "3", "a wug", "blue", "cone", 3, 0.3, [hit])                # colour wrong
    _object(text_only, "0", "a red cube", "red", "cube", 4)
    _object(text_only, "1", "a green sphere", "green", "sphere", 5)
    _object(text_only, "2", "a dax", "red", "cube", 6)                             # both wrong
    _object(text_only, "3", "a wug", "green", "torus", 7)
    return retrieval, text_only


def test_report_groups_and_rates(runs, tmp_path):
    summary = report.write_report(runs, CONCEPTS, tmp_path)
    assert summary["groups"] == {
        "in_domain/retrieval": {"objects": 2, "accuracy": 0.5, "colour_accuracy": 1.0, "shape_accuracy": 0.5,
                                "mean_fusion_weight": pytest.approx(0.8)},
        "in_domain/text_only": {"objects": 2, "accuracy": 1.0, "colour_accuracy": 1.0, "shape_accuracy": 1.0,
                                "mean_fusion_weight": None},
        "ood/retrieval": {"objects": 2, "accuracy": 0.5, "colour_accuracy": 0.5, "shape_accuracy": 1.0,
                          "mean_fusion_weight": pytest.approx(0.4)},
        "ood/text_only": {"objects": 2, "accuracy": 0.0, "colour_accuracy": 0.0, "shape_accuracy": 0.0,
                          "mean_fusion_weight": None},
    }
    written = json.loads((tmp_path / "report.json").read_text())
    assert written["groups"]["ood/retrieval"]["accuracy"] == 0.5 and len(written["objects"]) == 8
    assert "| ood/text_only | 2 | 0.00 |" in (tmp_path / "report.md").read_text()
    with Image.open(tmp_path / "report.png") as png:
        assert png.height == 4 * (72 + 26 + 10)  # a row per group


def test_prompt_concepts():
    assert report.prompt_concept("a dax", CONCEPTS) == ("ood", ("blue", "torus"))
    assert report.prompt_concept("A red cube.", CONCEPTS) == ("in_domain", ("red", "cube"))
    with pytest.raises(report.ReportError, match="names neither"):
        report.prompt_concept("a blicket", CONCEPTS)


def test_no_outputs_is_an_error(tmp_path):
    with pytest.raises(report.ReportError, match="no finished object"):
        report.score_runs([tmp_path], CONCEPTS)
