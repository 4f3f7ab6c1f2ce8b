"""mvrag_jax/models/attention.py: decoupled image cross-attention, cross-view self-attention, release param names."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mvrag_jax.models.attention import BasicTransformerBlock3D, CrossAttention, FusionWeights, SpatialTransformer3D

HEADS, DIM_HEAD, QUERY_DIM, CONTEXT_DIM = 2, 4, 8, 12


def _normal(seed: int, *shape: int) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal(shape).astype(np.float32)


def _softmax_attention(q: np.ndarray, k: np.ndarray, v: np.ndarray, heads: int) -> np.ndarray:
    """softmax(q k^T / sqrt(dh)) v per head, in float64: [b, l, heads * dh] in and out."""
    split = lambda t: t.reshape(t.shape[0], t.shape[1], heads, -1).transpose(0, 2, 1, 3).astype(np.float64)
    q, k, v = split(q), split(k), split(v)
    logits = q @ k.transpose(0, 1, 3, 2) / np.sqrt(q.shape[-1])
    weights = np.exp(logits - logits.max(-1, keepdims=True))
    weights /= weights.sum(-1, keepdims=True)
    out = weights @ v  # [b, heads, lq, dh]
    return out.transpose(0, 2, 1, 3).reshape(out.shape[0], out.shape[2], -1)


@pytest.fixture(scope="module")
def cross_attention():
    module = CrossAttention(HEADS, DIM_HEAD, QUERY_DIM, ip=True)
    x, context, image_tokens = _normal(0, 2, 5, QUERY_DIM), _normal(1, 2, 6, CONTEXT_DIM), _normal(2, 2, 3, CONTEXT_DIM)
    params = jax.jit(module.init)(jax.random.key(0), x, context, image_tokens, 1.0)["params"]
    return module, nn.unbox(params), x, context, image_tokens


def _project(params: dict, name: str, inputs: np.ndarray) -> np.ndarray:
    return inputs.astype(np.float64) @ np.asarray(params[name]["kernel"], np.float64)


def _by_hand(params: dict, x, context, image_tokens, text_weight: float, image_weight: float) -> np.ndarray:
    """w_text * Attn(q, k, v) + w_image * Attn(q, k_ip, v_ip), then to_out_0, with numpy softmax attention."""
    q = _project(params, "to_q", x)
    text = _softmax_attention(q, _project(params, "to_k", context), _project(params, "to_v", context), HEADS)
    image = _softmax_attention(q, _project(params, "to_k_ip", image_tokens), _project(params, "to_v_ip", image_tokens),
                               HEADS)
    combined = text_weight * text + image_weight * image
    return combined @ np.asarray(params["to_out_0"]["kernel"]) + np.asarray(params["to_out_0"]["bias"])


# inference: the official scale s weights (s, 1.5 - s); training: the paper's l * txt + 1 * ret (§3.3). `other`:
# the other mode's weights for the same number, which must give a different result.
@pytest.mark.parametrize("mode, scale, weights, other", [
    ("inference", jnp.float32(0.7), (0.7, 0.8), (0.7, 1.0)),
    ("inference_weights", FusionWeights.inference(jnp.float32(0.7)), (0.7, 0.8), (0.7, 1.0)),
    ("training", FusionWeights.training(jnp.float32(0.3)), (0.3, 1.0), (0.3, 1.2)),
    ("training_python_float", FusionWeights.training(0.2), (0.2, 1.0), (0.2, 1.3)),
])
def test_decoupled_attention_combines_text_and_image_terms_before_to_out(cross_attention, mode, scale, weights,
                                                                         other):
    module, params, x, context, image_tokens = cross_attention
    with jax.default_matmul_precision("highest"):
        ours = module.apply({"params": params}, x, context, image_tokens, scale)
    np.testing.assert_allclose(ours, _by_hand(params, x, context, image_tokens, *weights), atol=1e-5, rtol=1e-5)
    assert np.abs(np.asarray(ours) - _by_hand(params, x, context, image_tokens, *other)).max() > 1e-3


def test_training_weights_at_one_half_equal_the_inference_formula_at_scale_one_half(cross_attention):
    module, params, x, context, image_tokens = cross_attention
    trained = module.apply({"params": params}, x, context, image_tokens, FusionWeights.training(0.5))
    inferred = module.apply({"params": params}, x, context, image_tokens, jnp.float32(0.5))
    np.testing.assert_array_equal(trained, inferred)  # l' = l + 1 = 1.5: the same combination, bit for bit


def test_per_row_scale_weights_each_row_like_its_scalar(cross_attention):
    module, params, x, context, image_tokens = cross_attention
    scales = np.float32([0.2, 0.9])  # one fusion weight per row (object)
    with jax.default_matmul_precision("highest"):
        per_row = module.apply({"params": params}, x, context, image_tokens, jnp.asarray(scales))
        for row, scale in enumerate(scales):
            alone = module.apply({"params": params}, x, context, image_tokens, jnp.float32(scale))
            np.testing.assert_allclose(per_row[row], alone[row], atol=1e-6, rtol=1e-6)
    assert np.abs(np.asarray(per_row[0]) - np.asarray(alone[0])).max() > 1e-3  # row 0 did not take row 1's scale


def test_per_row_fusion_weights_weight_each_row_by_hand(cross_attention):
    module, params, x, context, image_tokens = cross_attention
    text_weights, image_weights = np.float32([0.2, 0.9]), np.float32([1.0, 0.4])
    with jax.default_matmul_precision("highest"):
        ours = module.apply({"params": params}, x, context, image_tokens,
                            FusionWeights(jnp.asarray(text_weights), jnp.asarray(image_weights)))
    for row in range(2):
        expected = _by_hand(params, x[row:row + 1], context[row:row + 1], image_tokens[row:row + 1],
                            text_weights[row], image_weights[row])
        np.testing.assert_allclose(ours[row:row + 1], expected, atol=1e-5, rtol=1e-5)


def test_text_only_attention_has_no_image_projections():
    module = CrossAttention(HEADS, DIM_HEAD, QUERY_DIM, ip=False)
    params = module.init(jax.random.key(0), _normal(0, 1, 5, QUERY_DIM), _normal(1, 1, 6, CONTEXT_DIM))["params"]
    assert sorted(params) == ["to_k", "to_out_0", "to_q", "to_v"]


def test_without_image_tokens_only_the_unweighted_text_term_is_used(cross_attention):
    module, params, x, context, image_tokens = cross_attention
    with jax.default_matmul_precision("highest"):
        text_only = module.apply({"params": params}, x, context, None, jnp.float32(0.3))
        with_image_at_scale_one = module.apply({"params": params}, x, context, image_tokens, jnp.float32(1.0))
    q = _project(params, "to_q", x)
    text = _softmax_attention(q, _project(params, "to_k", context), _project(params, "to_v", context), HEADS)
    expected = text @ np.asarray(params["to_out_0"]["kernel"]) + np.asarray(params["to_out_0"]["bias"])
    np.testing.assert_allclose(text_only, expected, atol=1e-5, rtol=1e-5)  # scale 0.3 ignored: no factor at all
    assert np.abs(np.asarray(with_image_at_scale_one) - np.asarray(text_only)).max() > 1e-3  # 0.5 * image term


def test_ip_params_exist_even_when_init_sees_no_image_tokens():
    module = CrossAttention(HEADS, DIM_HEAD, QUERY_DIM, ip=True)
    x, context = jnp.zeros((1, 5, QUERY_DIM)), jnp.zeros((1, 6, CONTEXT_DIM))
    shapes = jax.eval_shape(module.init, jax.random.key(0), x, context)
    params = nn.unbox(shapes)["params"]
    assert params["to_k_ip"]["kernel"].shape == params["to_v_ip"]["kernel"].shape == (CONTEXT_DIM, HEADS * DIM_HEAD)
    assert "bias" not in params["to_k_ip"] and "bias" in params["to_out_0"]


def test_self_attention_layer_has_no_ip_params():
    module = CrossAttention(HEADS, DIM_HEAD, QUERY_DIM, ip=False)
    params = nn.unbox(jax.eval_shape(module.init, jax.random.key(0), jnp.zeros((1, 5, QUERY_DIM))))["params"]
    assert set(params) == {"to_q", "to_k", "to_v", "to_out_0"}
    assert params["to_k"]["kernel"].shape == (QUERY_DIM, HEADS * DIM_HEAD)  # context defaults to x


def _block_outputs(num_frames: int, x: np.ndarray, params=None):
    block = BasicTransformerBlock3D(QUERY_DIM, HEADS, DIM_HEAD, num_frames)
    context = _normal(3, x.shape[0], 6, CONTEXT_DIM)
    if params is None:
        params = jax.jit(block.init)(jax.random.key(1), x, context, None, 1.0)
    return params, np.asarray(jax.jit(block.apply)(params, x, context, None, 1.0))


def test_attn1_mixes_the_views_of_one_object_and_nothing_else():
    x = _normal(4, 4, 3, QUERY_DIM)  # 2 objects x 2 views, 3 tokens each
    perturbed = x.copy()
    perturbed[1] += _normal(7, 3, QUERY_DIM)  # object 0, view 1 (not a constant shift: LayerNorm removes those)
    params, base = _block_outputs(2, x)
    _, changed = _block_outputs(2, perturbed, params)
    assert np.abs(changed[0] - base[0]).max() > 1e-3   # view 0 of the same object sees view 1
    np.testing.assert_array_equal(changed[2:], base[2:])  # the other object is untouched
    _, per_view_base = _block_outputs(1, x, params)
    _, per_view_changed = _block_outputs(1, perturbed, params)
    np.testing.assert_array_equal(per_view_changed[0], per_view_base[0])  # num_frames=1: views are independent


def test_spatial_transformer_param_names_mirror_release_keys():
    module = SpatialTransformer3D(32, 2, 16, num_frames=2, depth=2)
    shapes = jax.eval_shape(module.init, jax.random.key(0), jnp.zeros((2, 4, 4, 32)), jnp.zeros((2, 7, CONTEXT_DIM)),
                            jnp.zeros((2, 3, CONTEXT_DIM)))
    params = nn.unbox(shapes)["params"]
    assert set(params) == {"norm", "proj_in", "proj_out", "transformer_blocks_0", "transformer_blocks_1"}
    block = params["transformer_blocks_0"]
    assert set(block) == {"attn1", "attn2", "ff", "norm1", "norm2", "norm3"}
    assert set(block["attn2"]) == {"to_q", "to_k", "to_v", "to_out_0", "to_k_ip", "to_v_ip"}
    assert block["ff"]["net_0"]["proj"]["kernel"].shape == (32, 2 * 4 * 32)  # GEGLU: value and gate halves
    assert block["ff"]["net_2"]["kernel"].shape == (4 * 32, 32)
    assert set(params["norm"]) == {"scale", "bias"}


def test_spatial_transformer_is_residual_around_its_input():
    module = SpatialTransformer3D(32, 2, 16, num_frames=1)
    x, context = _normal(5, 1, 2, 2, 32), _normal(6, 1, 7, CONTEXT_DIM)
    params = nn.unbox(jax.jit(module.init)(jax.random.key(2), x, context))
    params["params"]["proj_out"] = jax.tree.map(jnp.zeros_like, params["params"]["proj_out"])
    np.testing.assert_array_equal(jax.jit(module.apply)(params, x, context), x)  # zero proj_out -> identity
