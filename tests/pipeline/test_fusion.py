"""mvrag_jax/pipeline/fusion.py: the DINOv2 fusion weight against the official f_score / pipeline outputs."""


import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mvrag_jax.pipeline import fusion
from mvrag_jax.models import dinov2
from mvrag_jax.verify import COMPONENT_TOL, compare
from mvrag_jax.verify.models import ReleaseModels
from tests.conftest import CASES, TINY_RELEASE


def _load(name: str) -> dict[str, np.ndarray]:
    with np.load(CASES / f"{name}.npz") as data:
        return {k: data[k] for k in data.files}


@pytest.fixture(scope="module")
def dino():
    models = ReleaseModels.open(TINY_RELEASE)
    config, params = models.get("dinov2")
    return config, params, dinov2.processor_config(models.release)


def _nhwc(x: np.ndarray) -> np.ndarray:
    return np.transpose(x, (0, 2, 3, 1))


def test_views_to_uint8_truncates_like_to_pil_image():
    case = _load("dinov2")
    np.testing.assert_array_equal(fusion.views_to_uint8(_nhwc(case["gen_images"])), case["gen_images_uint8"])
    # Truncation, not rounding: 0.999 * 255 = 254.7 -> 254; exactly 1.0 -> 255.
    views = np.array([0.0, 0.999, 1.0, 0.5], np.float32).reshape(1, 1, 4, 1)
    np.testing.assert_array_equal(fusion.views_to_uint8(views).ravel(), [0, 254, 255, 127])


@pytest.mark.parametrize("views, message", [
    (np.full((1, 3, 4, 4), 0.5, np.float32), "NHWC"),
    (np.full((1, 4, 4, 3), 1.5, np.float32), r"\[0, 1\]"),
])
def test_views_to_uint8_rejects_bad_layouts_and_ranges(views, message):
    with pytest.raises(ValueError, match=message):
        fusion.views_to_uint8(views)


def test_scores_from_official_embeddings_match_reference():
    case = _load("dinov2")
    gen, ret = jnp.asarray(case["gen_embeddings"]), jnp.asarray(case["ret_embeddings"])
    pairs = {
        "per_view_mean_sim": (fusion.per_view_mean_similarity(gen, ret), case["per_view_mean_sim"]),
        "similarity_score": (fusion.similarity_score(gen, ret), case["similarity_score"]),
        "alpha": (fusion.fusion_scale(fusion.similarity_score(gen, ret)), case["alpha"]),
    }
    for name, (ours, reference) in pairs.items():
        assert compare(ours, reference, COMPONENT_TOL)[0], name


def test_negative_agreement_gives_zero_scale_not_a_negative_one():
    case = _load("dinov2")
    gen, ret = jnp.asarray(case["gen_embeddings"]), -jnp.asarray(case["ret_embeddings"])
    score = fusion.similarity_score(gen, ret)
    assert float(score) < 0
    assert float(fusion.fusion_scale(score)) == 0.0


def test_cosine_similarity_ignores_scale_and_survives_zero_vectors():
    x = jnp.array([[3.0, 4.0], [0.0, 0.0]])
    y = jnp.array([[6.0, 8.0], [-1.0, 0.0]])
    sim = np.asarray(fusion.cosine_similarity(x, y))
    np.testing.assert_allclose(sim, [[1.0, -0.6], [0.0, 0.0]], atol=1e-6)  # eps keeps 0/0 finite, as torch does


def test_fusion_weight_of_pipeline_prior_views_matches_official_fusion_scale(dino):
    """pipeline_e2e: the prior pass's decoded views against the retrieved images, end to end through PIL."""
    case = _load("pipeline_e2e")
    config, params, processor = dino
    retrieved = [case["ret_image_0"], case["ret_image_1"]]
    with jax.default_matmul_precision("highest"):
        weight = fusion.fusion_weight(config, params, processor, _nhwc(case["prior_images"]), retrieved)
    pairs = {"prior_embeddings": (weight.view_embeddings, case["prior_embeddings"]),
             "ret_embeddings": (weight.retrieved_embeddings, case["ret_embeddings"]),
             "similarity_score": (weight.score, case["similarity_score"]),
             "fusion_scale": (weight.scale, case["fusion_scale"])}
    for name, (ours, reference) in pairs.items():
        assert compare(ours, reference, COMPONENT_TOL)[0], (name, ours, reference)
    assert weight.per_view_mean_sim.shape == (4,) and weight.scale.dtype == np.float32


def test_fusion_weight_needs_retrieved_images(dino):
    config, params, processor = dino
    with pytest.raises(ValueError, match="at least one retrieved image"):
        fusion.fusion_weight(config, params, processor, np.zeros((1, 8, 8, 3), np.float32), [])


@pytest.mark.parametrize("name, key", [("dinov2", "gen_images"), ("pipeline_e2e", "prior_images")])
def test_device_path_gives_the_exact_weight_on_reference_views(dino, name, key):
    """The on-device path (jnp quantisation + Pillow-exact resize) against the host path: identical weights."""
    case = _load(name)
    config, params, processor = dino
    retrieved = [case["ret_image_0"], case["ret_image_1"]]
    views = _nhwc(case[key])
    with jax.default_matmul_precision("highest"):
        exact = fusion.fusion_weight(config, params, processor, views, retrieved)
        device = fusion.device_view_embeddings(config, params, processor, jnp.asarray(views))
        per_view, score, scale = fusion.batched_similarity(device[None], jnp.asarray(exact.retrieved_embeddings)[None])
    np.testing.assert_array_equal(np.asarray(device), exact.view_embeddings)
    assert float(scale[0]) == float(exact.scale) and float(score[0]) == float(exact.score)
    np.testing.assert_array_equal(np.asarray(per_view[0]), exact.per_view_mean_sim)
