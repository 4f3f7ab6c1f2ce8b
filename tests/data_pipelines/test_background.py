"""Render backgrounds: config checks, draws, and alpha compositing by hand."""

import numpy as np
import pytest

from configs import data
from data_pipelines import background, records


def _spec(**fields):
    cfg = data.get_config("size=tiny")
    cfg.update(fields)
    return background.Background.from_config(cfg)


def test_random_draws_cover_the_inclusive_range_and_fixed_draws_the_level():
    spec = _spec(background="random", background_range=(60, 70))
    values = [spec.draw(np.random.default_rng(i)) for i in range(400)]
    assert min(values) == 60 and max(values) == 70 and len(set(values)) == 11
    fixed = _spec(background="fixed", background_level=90)
    assert {fixed.draw(np.random.default_rng(i)) for i in range(20)} == {90}
    rng_a, rng_b = np.random.default_rng(3), np.random.default_rng(3)  # one draw either way: later draws agree
    spec.draw(rng_a), fixed.draw(rng_b)
    assert rng_a.uniform() == rng_b.uniform()


@pytest.mark.parametrize("fields, message", [
    ({"background": "grey"}, r"background='grey'; choose one of \('random', 'fixed'\)"),
    ({"background_range": (192, 64)}, r"\(192, 64\) is empty; low must be <= high"),
    ({"background_range": (0, 300)}, r"background_range=300; a grey level is an integer in \[0, 255\]"),
    ({"background_range": (1, 2, 3)}, r"give \(low, high\)"),
    ({"background_level": -1}, r"background_level=-1; a grey level"),
])
def test_bad_background_fields_are_clear_errors(fields, message):
    with pytest.raises(background.BackgroundConfigError, match=message):
        _spec(**fields)


def test_composite_is_straight_alpha_over_grey():
    rgba = np.array([[[200, 100, 0, 255], [200, 100, 0, 0], [200, 100, 0, 64]]], np.uint8)
    expected = [[[200, 100, 0], [80, 80, 80], [round(200 * 64 / 255 + 80 * 191 / 255),
                                               round(100 * 64 / 255 + 80 * 191 / 255), round(80 * 191 / 255)]]]
    np.testing.assert_array_equal(background.composite(rgba, 80), expected)
    rgb_only = background.decode_rgba(records.encode_png(np.full((2, 2, 3), 9, np.uint8)))
    assert rgb_only.shape == (2, 2, 4) and (rgb_only[..., 3] == 255).all()  # RGB files: opaque
