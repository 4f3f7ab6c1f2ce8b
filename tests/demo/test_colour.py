"""The demo's colour check: dominant colour of generated views against the colour the prompt names."""

import json

import numpy as np
import pytest
from PIL import Image

from mvrag_jax.demo import colour

PALETTE = ("red", "green", "blue")


def _views(rgb, shade=1.0, size=16):
    views = np.full((4, size, size, 3), colour.BACKGROUND, np.uint8)
    views[:, 4:12, 4:12] = (np.asarray(rgb) * 255 * shade).astype(np.uint8)
    return views


def test_dominant_colour_ignores_background_and_shading():
    assert colour.dominant_colour(_views((0.85, 0.12, 0.10), shade=0.5), PALETTE) == "red"
    assert colour.dominant_colour(_views((0.12, 0.25, 0.85)), PALETTE) == "blue"
    assert colour.dominant_colour(np.full((4, 16, 16, 3), colour.BACKGROUND, np.uint8), PALETTE) is None


def _write(out, name, prompt, views):
    folder = out / name
    folder.mkdir(parents=True)
    for i, view in enumerate(views):
        Image.fromarray(view).save(folder / f"view_{i}.png")
    (folder / "record.json").write_text(json.dumps({"prompt": prompt}))


def test_score_outputs_counts_matches(tmp_path):
    _write(tmp_path, "0", "a red cube", _views((0.85, 0.12, 0.10)))
    _write(tmp_path, "1", "a green sphere", _views((0.12, 0.25, 0.85)))   # drew blue: a miss
    _write(tmp_path, "2", "a blue cone", _views((0.12, 0.25, 0.85)))
    _write(tmp_path, "3", "a thing", _views((0.12, 0.25, 0.85)))          # names no colour: not scored
    score = colour.score_outputs(tmp_path, PALETTE)
    assert (score.objects, score.matches) == (3, 2)
    assert score.rate == pytest.approx(2 / 3) and score.chance == pytest.approx(1 / 3)


def test_score_outputs_without_objects_is_an_error(tmp_path):
    with pytest.raises(ValueError, match="no finished object"):
        colour.score_outputs(tmp_path, PALETTE)
