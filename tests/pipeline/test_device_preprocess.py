"""mvrag_jax/pipeline/device_preprocess.py: the on-device twin of the official view preprocessing is bit-exact with PIL."""

import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image

from mvrag_jax.inputs import images
from mvrag_jax.pipeline import device_preprocess, fusion
from mvrag_jax.models import dinov2
from mvrag_jax.inputs.release import Release
from mvrag_jax.verify.arrays import nhwc
from tests.conftest import TINY_RELEASE, load_case


@pytest.mark.parametrize("size", [(32, 32, 48, 48), (32, 32, 20, 20), (30, 40, 48, 64), (44, 28, 57, 91),
                                  (64, 64, 17, 33)])
@pytest.mark.parametrize("resample", [Image.Resampling.BILINEAR, Image.Resampling.BICUBIC])
def test_resize_matches_pillow_exactly(size, resample):
    h, w, out_h, out_w = size
    image = np.random.default_rng(h * w).integers(0, 256, (h, w, 3), dtype=np.uint8)
    expected = np.asarray(Image.fromarray(image).resize((out_w, out_h), resample=resample))
    ours = device_preprocess.pil_resize_levels(jnp.asarray(image[None], jnp.int32), out_h, out_w, int(resample))[0]
    np.testing.assert_array_equal(np.asarray(ours), expected)


def _views() -> dict[str, np.ndarray]:
    """Float views in [0, 1]: the reference prior-like views, the pipeline_e2e prior pass, random views."""
    rng = np.random.default_rng(0)
    return {"dinov2_gen_images": nhwc(load_case("dinov2")["gen_images"]),
            "pipeline_e2e_prior_images": nhwc(load_case("pipeline_e2e")["prior_images"]),
            "random": rng.random((3, 32, 32, 3), dtype=np.float32),
            "random_odd_size": rng.random((2, 27, 27, 3), dtype=np.float32)}


@pytest.mark.parametrize("name", sorted(_views()))
def test_processor_pixels_equal_the_host_path(name):
    views = _views()[name]
    processor = dinov2.processor_config(Release.open(TINY_RELEASE))
    host = images.clip_preprocess(list(fusion.views_to_uint8(views)), processor)
    device = device_preprocess.preprocess_views(jnp.asarray(views), processor)
    np.testing.assert_array_equal(np.asarray(device), host)


def test_unsupported_filter_is_a_clear_error():
    with pytest.raises(images.ImageError, match="fusion_path='exact'"):
        device_preprocess.pil_coefficients(10, 5, int(Image.Resampling.LANCZOS))
