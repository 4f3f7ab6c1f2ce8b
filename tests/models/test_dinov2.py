"""mvrag_jax/models/dinov2.py: parity with HF Dinov2Model + BitImageProcessor (PIL), torch bicubic, configs."""

import dataclasses
import json

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import PIL.Image
import pytest

from configs import mvrag_sd21, tiny
from mvrag_jax.convert.components import COMPONENTS_BY_NAME, abstract_params
from mvrag_jax.convert.keys import flatten, state_dict_to_params
from mvrag_jax.inputs.release import Release
from mvrag_jax.inputs import images
from mvrag_jax.models import dinov2
from mvrag_jax.sharding import DEFAULT_RULES
from mvrag_jax.verify import run_case
from tests.conftest import CASES, REFERENCE, TINY_RELEASE, load_case

DINO_FOLDER = TINY_RELEASE / "facebook" / "dinov2-base"


@pytest.fixture(scope="module")
def case() -> dict[str, np.ndarray]:
    return load_case("dinov2")


def test_matches_official_similarity_model_on_reference_case(release_models):
    result = run_case("dinov2", release_models, CASES)
    assert result.status == "pass", result.details
    assert {"cls", "last_hidden_state", "cls_normalized", "ret_pixel_values", "gen_pixel_values", "ret_embeddings",
            "gen_embeddings", "per_view_mean_sim", "similarity_score", "alpha"} <= set(result.details)
    # The processor is exact (same PIL resize, same float64 rescale), not merely within tolerance.
    assert result.details["ret_pixel_values"]["max_abs_err"] == 0.0


def test_full_size_parameter_count_matches_release_manifest():
    config = dinov2.DINOv2Config.from_config(mvrag_sd21.get_config())
    shapes = nn.unbox(jax.eval_shape(dinov2.init_params, config, jax.random.key(0)))
    total = sum(leaf.size for leaf in jax.tree.leaves(shapes))
    manifest = json.loads((REFERENCE / "manifests" / "dinov2.json").read_text())
    assert total == 86_580_480 == manifest["total_parameters"]
    assert config == dinov2.DINOv2Config() and config.position_grid == 37
    assert shapes["embeddings"]["position_embeddings"].shape == (1, 37 * 37 + 1, 768)


def test_full_size_forward_at_processor_crop_uses_a_16x16_grid():
    """dinov2-base sees 224 crops: 16x16 patches from a 37x37 position table (shapes only, nothing allocated)."""
    config = dinov2.DINOv2Config()
    params = nn.unbox(jax.eval_shape(dinov2.init_params, config, jax.random.key(0)))
    pixels = jax.ShapeDtypeStruct((2, 224, 224, 3), jnp.float32)
    out = jax.eval_shape(lambda p, x: dinov2.last_hidden_state(config, p, x), params, pixels)
    assert out.shape == (2, 1 + 16 * 16, 768)


def test_tiny_configs_match_tiny_release():
    release = Release.open(TINY_RELEASE)
    assert dinov2.DINOv2Config.from_release(release) == dinov2.DINOv2Config.from_config(tiny.get_config())
    # Read from facebook/dinov2-base/, not from the CLIP feature_extractor/ of the same release.
    processor = dinov2.processor_config(release)
    assert (processor.shortest_edge, processor.crop_hw, processor.resample) == (48, (42, 42), 3)
    assert processor.image_mean == (0.485, 0.456, 0.406) and processor.image_std == (0.229, 0.224, 0.225)


@pytest.mark.parametrize("in_size, out_size", [(4, 6), (37, 16), (16, 37), (5, 5), (3, 1)])
def test_bicubic_weights_are_a_mirror_symmetric_partition_of_unity(in_size, out_size):
    weights = dinov2.bicubic_weights(in_size, out_size)
    assert weights.shape == (out_size, in_size) and weights.dtype == np.float32
    np.testing.assert_allclose(weights.sum(axis=1), 1.0, atol=1e-6)
    # align_corners=False treats both ends alike: flipping input and output flips the matrix.
    np.testing.assert_allclose(weights[::-1, ::-1], weights, atol=1e-5)
    if in_size == out_size:
        np.testing.assert_array_equal(weights, np.eye(in_size, dtype=np.float32))


def test_bicubic_weights_match_hand_computed_cubic_convolution():
    """8 -> 4: output 1 samples src = 2.5 (t = 0.5), taps 1..4 with weights far(1.5), near(0.5), near(0.5), far(1.5)
    = -0.09375, 0.59375, 0.59375, -0.09375 for a = -0.75 (a = -0.5, as in jax.image.resize, gives -0.0625, 0.5625)."""
    weights = dinov2.bicubic_weights(8, 4)
    np.testing.assert_array_equal(weights[1], np.array([0, -0.09375, 0.59375, 0.59375, -0.09375, 0, 0, 0], np.float32))


def test_bicubic_borders_replicate_and_differ_from_jax_image_resize():
    """Taps left of index 0 land on index 0 (replicate): a constant-then-step signal keeps its edge value."""
    weights = dinov2.bicubic_weights(4, 8)
    # Output 0: src = -0.25, taps at -2, -1, 0, 1 with t = 0.75; the three left taps all land on sample 0:
    # far(1.75) + near(0.75) + near(0.25) = -0.03515625 + 0.26171875 + 0.87890625 (by hand, a = -0.75).
    assert weights[0, 0] == np.float32(1.10546875) and weights[0, 1] == np.float32(-0.10546875)
    signal = np.array([1.0, 1.0, 1.0, 1.0], np.float32)
    np.testing.assert_allclose(weights @ signal, 1.0, atol=1e-6)
    grid = np.random.default_rng(0).normal(size=(4, 4, 3)).astype(np.float32)
    ours = np.asarray(dinov2.interpolate_position_grid(jnp.asarray(grid), 6, 6))
    theirs = np.asarray(jax.image.resize(grid, (6, 6, 3), "bicubic"))
    assert np.abs(ours - theirs).max() > 1e-3  # jax's kernel (a=-0.5, no clamping) would miss parity


def test_in_memory_transformers_names_convert_identically(release_models):
    config, params = release_models.get("dinov2")
    renames = {"attention.attention.query.": "attention.q_proj.", "attention.attention.key.": "attention.k_proj.",
               "attention.attention.value.": "attention.v_proj.", "attention.output.dense.": "attention.o_proj."}
    in_memory = {}
    for key, array in release_models.release.weights("dinov2").items():
        for hub, new in renames.items():
            key = key.replace(hub, new)
        in_memory[key] = array
    assert "encoder.layer.1.attention.o_proj.weight" in in_memory
    component = COMPONENTS_BY_NAME["dinov2"]
    converted = flatten(state_dict_to_params(component.normalize_keys(in_memory), abstract_params(component, config),
                                             component="dinov2"))
    reference = flatten(params)
    assert converted.keys() == reference.keys()
    for path in reference:
        np.testing.assert_array_equal(converted[path], reference[path], err_msg=str(path))


def test_processor_accepts_pil_and_arrays_identically(case):
    arrays = [case["ret_image_0"], case["ret_image_1"]]
    processor = dinov2.processor_config(Release.open(TINY_RELEASE))
    from_pil = dinov2.preprocess([PIL.Image.fromarray(a) for a in arrays], processor)
    np.testing.assert_array_equal(from_pil, dinov2.preprocess(arrays, processor))
    with pytest.raises(images.ImageError, match="uint8"):
        dinov2.preprocess([arrays[0].astype(np.float32) / 255], processor)
    with pytest.raises(images.ImageError, match="no images"):
        dinov2.preprocess([], processor)


def test_bfloat16_compute_keeps_float32_params_and_stays_close(release_models, case):
    config, params = release_models.get("dinov2")
    bf16 = dataclasses.replace(config, dtype="bfloat16")
    pixels = jnp.asarray(np.transpose(case["pixel_values"], (0, 2, 3, 1)))
    cls = dinov2.cls_embeddings(bf16, params, pixels)
    assert cls.dtype == jnp.float32 and all(leaf.dtype == np.float32 for leaf in jax.tree.leaves(params))
    error = np.abs(np.asarray(cls) - case["cls_normalized"])
    assert 0 < error.max() < 0.05


def test_every_param_has_logical_axis_names():
    config = dinov2.DINOv2Config.from_config(tiny.get_config())
    specs = nn.get_partition_spec(jax.eval_shape(dinov2.init_params, config, jax.random.key(0)))
    leaves = jax.tree_util.tree_leaves_with_path(specs, is_leaf=lambda x: isinstance(x, jax.sharding.PartitionSpec))
    assert len(leaves) == len(Release.open(TINY_RELEASE).weights("dinov2"))
    for path, spec in leaves:
        name = jax.tree_util.keystr(path)
        assert spec[-1] is not None, (name, spec)  # the feature axis of every param is named
        nn.logical_to_mesh_axes(spec, DEFAULT_RULES)


@pytest.mark.parametrize("changes, message", [
    ({"use_swiglu_ffn": True}, "use_swiglu_ffn"),
    ({"image_size": [28, 35]}, "only square sizes"),
    ({"hidden_act": "silu"}, "only 'gelu'"),
    ({"num_attention_heads": 3}, "not divisible by num_attention_heads=3"),
])
def test_unsupported_release_configs_are_rejected(changes, message):
    raw = json.loads((DINO_FOLDER / "config.json").read_text()) | changes
    with pytest.raises(dinov2.DINOv2ConfigError, match=message):
        dinov2.DINOv2Config.from_hf_config(raw)


def test_absent_fields_take_transformers_defaults():
    config = dinov2.DINOv2Config.from_hf_config({"hidden_size": 64, "num_attention_heads": 4})
    assert config.image_size == 224 and config.patch_size == 14 and config.num_hidden_layers == 12


def test_missing_processor_config_is_an_error_naming_the_fix(tmp_path):
    (tmp_path / "facebook" / "dinov2-base").mkdir(parents=True)
    (tmp_path / "model_index.json").write_text("{}")
    with pytest.raises(dinov2.DINOv2ConfigError, match="preprocessor_config.json.*copy"):
        dinov2.processor_config(Release.open(tmp_path))
