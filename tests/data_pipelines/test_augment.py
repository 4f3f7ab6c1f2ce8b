"""Retrieval-simulation augmentations: exact geometry of the homography, determinism, identities."""

import numpy as np
import pytest
from ml_collections import ConfigDict

from data_pipelines import augment

PARAMS = ConfigDict({"perspective": 0.2, "rotation_deg": 20.0, "crop_scale": (0.5, 1.0), "crop_ratio": (0.75, 1.33),
                     "brightness": 0.2, "contrast": 0.2, "saturation": 0.2, "hue": 0.02})


def _image(size=32):
    rng = np.random.default_rng(0)
    return rng.integers(0, 256, (size, size, 3)).astype(np.uint8)


def test_perspective_coefficients_map_corners_to_sources():  # the data PIL's PERSPECTIVE transform takes
    target = np.array([[0, 0], [32, 0], [32, 32], [0, 32]], np.float64)
    source = target + np.array([[3, 1], [-2, 4], [-5, -1], [2, -3]])
    a, b, c, d, e, f, g, h = augment._perspective_coefficients(target, source)
    for (x, y), (u, v) in zip(target, source):
        w = g * x + h * y + 1
        np.testing.assert_allclose([(a * x + b * y + c) / w, (d * x + e * y + f) / w], [u, v], atol=1e-9)


def test_simulate_retrieval_is_a_pure_function_of_the_rng():
    image = _image(48)
    first = augment.simulate_retrieval(image, np.random.default_rng(5), size=24, params=PARAMS, background=127)
    again = augment.simulate_retrieval(image, np.random.default_rng(5), size=24, params=PARAMS, background=127)
    other = augment.simulate_retrieval(image, np.random.default_rng(6), size=24, params=PARAMS, background=127)
    assert first.shape == (24, 24, 3) and first.dtype == np.uint8
    np.testing.assert_array_equal(first, again)
    assert np.abs(first.astype(int) - other).mean() > 5


def test_zero_strength_augmentations_are_identities():
    image, rng = _image(), np.random.default_rng(0)
    np.testing.assert_array_equal(augment.warp(image, rng, 0.0, 0.0, 127), image)
    assert np.abs(augment.colour_jitter(image, rng, 0, 0, 0, 0).astype(int) - image).max() <= 1
    np.testing.assert_array_equal(augment.random_resized_crop(image, rng, 32, (1.0, 1.0), (1.0, 1.0)), image)


def test_colour_jitter_matches_its_step_by_step_definition():
    image, params = _image(), (0.3, 0.3, 0.3, 0.05)
    rng = np.random.default_rng(3)
    b, c, s = (rng.uniform(1 - p, 1 + p) for p in params[:3])
    theta = rng.uniform(-params[3], params[3]) * 2 * np.pi
    x = image / 255.0 * b
    x = (x - (x @ augment._LUMA).mean()) * c + (x @ augment._LUMA).mean()
    x = (x @ augment._LUMA)[..., None] * (1 - s) + x * s
    yiq = x @ augment._RGB_TO_YIQ.T
    i, q = yiq[..., 1].copy(), yiq[..., 2].copy()
    yiq[..., 1], yiq[..., 2] = np.cos(theta) * i - np.sin(theta) * q, np.sin(theta) * i + np.cos(theta) * q
    expected = np.clip(np.round(yiq @ np.linalg.inv(augment._RGB_TO_YIQ).T * 255), 0, 255)
    actual = augment.colour_jitter(image, np.random.default_rng(3), *params)
    assert np.abs(actual - expected).max() <= 1


def test_warp_rotates_about_the_centre():
    image = np.full((33, 33, 3), 127, np.uint8)
    image[16, 28] = 255  # a dot 12 pixels right of the centre
    ys, xs = np.nonzero(augment.warp(image, np.random.default_rng(4), 90.0, 0.0, 127)[..., 0] > 160)  # ~67 deg
    assert abs(np.hypot(ys.mean() + 0.5 - 16.5, xs.mean() + 0.5 - 16.5) - 12) < 1.5  # still 12 from the centre
    assert abs(ys.mean() - 16) > 8  # but moved well off its row


MIX = ConfigDict({**PARAMS.to_dict(), "perspective_prob": 0.5, "rotation_prob": 1.0, "crop_prob": 0.0,
                  "jitter_prob": 0.25})


def test_ops_are_drawn_with_their_probabilities():
    ops = np.array([augment.draw_ops(np.random.default_rng(i), MIX) for i in range(2000)])
    assert (ops & augment.ROTATION).all() and not (ops & augment.CROP).any()  # probabilities 1 and 0
    for flag, p in ((augment.PERSPECTIVE, 0.5), (augment.JITTER, 0.25)):
        count = ((ops & flag) > 0).sum()
        assert abs(count - 2000 * p) < 4 * np.sqrt(2000 * p * (1 - p)), (flag, count)  # binomial bound
    assert ((ops & augment.PERSPECTIVE) > 0).mean() != ((ops & augment.JITTER) > 0).mean()


def test_ops_that_are_off_leave_the_image_alone():
    image = _image(48)
    plain = augment.simulate_retrieval(image, np.random.default_rng(0), size=24, params=PARAMS, background=127, ops=0)
    np.testing.assert_array_equal(plain, augment.resize(image, 24))
    jitter_only = augment.simulate_retrieval(image, np.random.default_rng(1), size=24, params=PARAMS, background=127,
                                             ops=augment.JITTER)
    expected = augment.colour_jitter(augment.resize(image, 24), np.random.default_rng(1), PARAMS.brightness,
                                     PARAMS.contrast, PARAMS.saturation, PARAMS.hue)
    np.testing.assert_array_equal(jitter_only, expected)


@pytest.mark.parametrize("field, value, message", [
    ("crop_prob", 1.2, r"mode_3d.augment.crop_prob=1.2; a probability is in \[0, 1\]"),
    ("jitter_prob", -0.5, r"jitter_prob=-0.5"),
    ("perspective", 0.6, r"perspective=0.6; corners move inward by less than half"),
    ("crop_scale", (0.9, 0.5), r"crop_scale=\(0.9, 0.5\); need 0 < low <= high <= 1"),
    ("hue", -0.1, r"hue=-0.1; strengths are >= 0"),
])
def test_bad_augment_fields_are_clear_errors(field, value, message):
    params = ConfigDict(MIX.to_dict())
    params[field] = value
    with pytest.raises(augment.AugmentConfigError, match=message):
        augment.check_params(params)
    augment.check_params(MIX)  # the unchanged mix is fine
