"""mvrag_jax/inputs/images.py: the official retrieved-image preprocessing (pad_to_square -> v2.Resize(256) ->
CLIPImageProcessor, PIL backend), against the clip_vision reference case; plus the uint8 rule of verify/clip.py."""


import numpy as np
import pytest
from PIL import Image

from mvrag_jax.inputs import images
from mvrag_jax.inputs.release import Release
from mvrag_jax.verify.arrays import uint8_violations
from tests.conftest import TINY_RELEASE, load_case


@pytest.fixture(scope="module")
def case() -> dict[str, np.ndarray]:
    return load_case("clip_vision")


@pytest.fixture(scope="module")
def processor() -> images.CLIPImageProcessorConfig:
    return images.CLIPImageProcessorConfig.from_release(Release.open(TINY_RELEASE))


def _retrieved(case) -> list[np.ndarray]:
    return [case["ret_image_0"], case["ret_image_1"]]


def test_pipeline_transform_matches_official_within_uint8_rule(case):
    ours = np.stack([images.pipeline_transform(image) for image in _retrieved(case)])
    reference = case["pipe_transformed_uint8"]
    assert ours.shape == reference.shape == (2, 256, 256, 3) and ours.dtype == np.uint8
    diff = np.abs(ours.astype(np.int32) - reference).max(axis=-1)  # [k, h, w] per pixel
    assert diff.max() <= 1
    assert np.count_nonzero(diff) <= 0.005 * diff.size
    np.testing.assert_array_equal(uint8_violations(ours, reference), [0, 0])


def test_processor_matches_official_pixel_values_from_the_official_transform(case, processor):
    """The CLIPImageProcessor step alone, fed the official transform output."""
    ours = images.clip_preprocess(list(case["pipe_transformed_uint8"]), processor)  # [k, s, s, 3]
    assert ours.dtype == np.float32 and ours.shape == (2, 32, 32, 3)
    np.testing.assert_allclose(np.transpose(ours, (0, 3, 1, 2)), case["pipe_pixel_values"], rtol=1e-4, atol=1e-4)


def test_retrieved_pixel_values_chain_matches_official(case, processor):
    ours = images.retrieved_pixel_values(_retrieved(case), processor)
    np.testing.assert_allclose(np.transpose(ours, (0, 3, 1, 2)), case["pipe_pixel_values"], rtol=1e-4, atol=1e-4)


def test_processor_config_is_read_from_the_release(processor):
    assert processor.shortest_edge == 32 and processor.resize_hw is None and processor.crop_hw == (32, 32)
    assert processor.resample == Image.Resampling.BICUBIC and processor.rescale_factor == pytest.approx(1 / 255)
    assert processor.image_mean == images.OPENAI_CLIP_MEAN and processor.image_std == images.OPENAI_CLIP_STD


def test_processor_config_accepts_legacy_int_sizes_and_rejects_unknown_ones():
    legacy = images.CLIPImageProcessorConfig.from_dict({"size": 224, "crop_size": 224, "resample": 2})
    assert (legacy.shortest_edge, legacy.crop_hw, legacy.resample) == (224, (224, 224), 2)
    exact = images.CLIPImageProcessorConfig.from_dict({"size": {"height": 40, "width": 30}})
    assert (exact.shortest_edge, exact.resize_hw) == (None, (40, 30))
    with pytest.raises(images.ImageError, match="neither shortest_edge nor height/width"):
        images.CLIPImageProcessorConfig.from_dict({"size": {"longest_edge": 224}})


def test_pad_to_square_puts_the_odd_pixel_right_and_bottom():
    image = np.full((2, 5, 3), 7, np.uint8)  # h=2, w=5 -> m=5: top 1, bottom 2
    square = images.pad_to_square(image)
    assert square.shape == (5, 5, 3)
    np.testing.assert_array_equal(square[1:3], image)
    assert not square[[0, 3, 4]].any()
    tall = images.pad_to_square(np.full((4, 1), 9, np.uint8))  # w=1 -> left 1, right 2
    np.testing.assert_array_equal(tall[:, 1], 9)
    assert not tall[:, [0, 2, 3]].any()


@pytest.mark.parametrize("hw, size, expected", [((30, 40), 256, (256, 341)), ((44, 28), 256, (402, 256)),
                                                ((50, 50), 32, (32, 32))])
def test_shortest_edge_size_truncates_the_long_side(hw, size, expected):
    assert images.shortest_edge_size(*hw, size) == expected


def test_center_crop_offsets_round_down_and_small_images_are_padded():
    image = np.arange(7 * 6).reshape(7, 6).astype(np.uint8)
    np.testing.assert_array_equal(images.center_crop(image, 4, 3), image[1:5, 1:4])  # (7-4)//2, (6-3)//2
    small = np.full((2, 1), 5, np.uint8)
    padded = images.center_crop(small, 4, 4)  # pad ceil(2/2)=1 on top, ceil(3/2)=2 on the left
    np.testing.assert_array_equal(np.argwhere(padded == 5), [[1, 2], [2, 2]])
    assert padded.sum() == 10


def test_rgba_is_composited_on_white_and_gray_is_replicated():
    rgba = np.zeros((2, 2, 4), np.uint8)
    rgba[0, 0] = (10, 20, 30, 255)
    rgb = images.to_rgb(rgba)
    np.testing.assert_array_equal(rgb[0, 0], (10, 20, 30))
    np.testing.assert_array_equal(rgb[1, 1], (255, 255, 255))  # fully transparent -> white
    gray = images.to_rgb(np.full((2, 3), 17, np.uint8))
    assert gray.shape == (2, 3, 3) and np.all(gray == 17)


def test_negative_images_are_zeros_in_normalised_space(case):
    negative = images.negative_pixel_values(case["pipe_pixel_values"])
    assert negative.shape == case["pipe_pixel_values"].shape and negative.dtype == np.float32
    assert not negative.any()


@pytest.mark.parametrize("image, message", [(np.zeros((4, 4, 3), np.float32), "must be uint8"),
                                            (np.zeros((3, 4, 4, 2), np.uint8), "is not \\[h, w\\]")])
def test_invalid_images_are_rejected(image, message):
    with pytest.raises(images.ImageError, match=message):
        images.pad_to_square(image)


def test_uint8_rule_counts_pixels_not_channels():
    reference = np.zeros((1, 20, 20, 3), np.uint8)  # 400 pixels: 0.5 % allows 2 pixels off by one
    ours = reference.copy()
    ours[0, 0, 0] = (1, 1, 1)  # one pixel, three channels off by one
    ours[0, 1, 1, 2] = 1
    np.testing.assert_array_equal(uint8_violations(ours, reference), [0, 0])
    ours[0, 2, 2, 0] = 1  # a third pixel off by one: one over the allowance
    ours[0, 3, 3, 1] = 2  # and one off by two
    np.testing.assert_array_equal(uint8_violations(ours, reference), [1, 2])
