"""The demo's scorer on real renders: ground truth reads right, a wrong prompt reads wrong."""

import numpy as np
import pytest

from data_pipelines import raster, shapes
from mvrag_jax.demo.score import DEFAULT_PALETTE, DEFAULT_SHAPES, ScoreError, ShapeScorer, border_background
from mvrag_jax.inputs.camera import get_camera

PALETTE = DEFAULT_PALETTE


def render_views(colour: str, shape: str, rng: np.random.Generator, background: int = 127, elevation: float = 15.0,
                 size: int = 32) -> np.ndarray:
    """The 4 views `mvrag generate` asks for (azimuths 0, 90, 180, 270) of a training-like object: any yaw, a
    scale of the training range."""
    mesh = shapes.make_mesh(shape, colour, scale=rng.uniform(0.4, 0.55), yaw_deg=rng.uniform(0, 360))
    return np.stack([raster.render(mesh, camera, size=size, background=background, supersample=1)
                     for camera in get_camera(4, elevation=elevation, azimuth_start=0.0)])


def test_renders_of_every_class_read_right():
    """Every (colour, shape) of the demo, 3 random poses each on three greys: all 48 read right."""
    scorer, rng = ShapeScorer(palette=PALETTE), np.random.default_rng(7)
    wrong = []
    for colour in PALETTE:
        for shape in DEFAULT_SHAPES:
            for background in (127, 96, 160):
                result = scorer.classify(render_views(colour, shape, rng, background))
                if (result.colour, result.shape) != (colour, shape):
                    wrong.append((colour, shape, background, result.colour, result.shape))
    assert wrong == []


def test_nearest_template_is_the_drawn_shape_by_a_margin():
    result = ShapeScorer(palette=PALETTE).classify(render_views("green", "torus", np.random.default_rng(1)))
    others = sorted(d for s, d in result.distances.items() if s != "torus")
    assert result.shape == "torus" and result.distances["torus"] < 0.5 * others[0]


def test_empty_views_have_no_colour():
    result = ShapeScorer(palette=PALETTE).classify(np.full((4, 32, 32, 3), 127, np.uint8))
    assert result.colour is None


def test_border_background_is_each_views_grey():
    views = render_views("red", "cube", np.random.default_rng(0), background=101)
    views[2][views[2] == 101] = 140  # one view on another grey
    np.testing.assert_array_equal(border_background(views), [[101] * 3, [101] * 3, [140] * 3, [101] * 3])


def test_views_on_different_backgrounds_still_read_right():
    """Generated views' backgrounds drift apart in tint: each view is read against its own."""
    rng = np.random.default_rng(3)
    views = render_views("blue", "cone", rng)
    greys = (127, 100, 150, 90)
    tinted = np.stack([np.where(view == 127, np.uint8(grey), view) for view, grey in zip(views, greys)])
    result = ShapeScorer(palette=PALETTE).classify(tinted)
    assert (result.colour, result.shape) == ("blue", "cone")


def test_views_of_another_size_are_refused():
    with pytest.raises(ScoreError, match="built for"):
        ShapeScorer().classify(np.zeros((4, 16, 16, 3), np.uint8))
