"""mvrag_jax/convert/keys.py: the rename table, layout transforms, and CheckpointKeyError reporting."""

import json

import jax
import ml_dtypes
import numpy as np
import pytest

from mvrag_jax.convert.keys import (CheckpointKeyError, flatten, flax_path_to_torch_key, flax_to_torch_array,
                                    params_to_state_dict, state_dict_to_params, torch_key_to_module_path,
                                    torch_to_flax_array, unflatten)
from mvrag_jax.inputs.release import read_safetensors
from tests.conftest import REFERENCE

MANIFEST_NAMES = ("unet", "resampler", "clip_text", "clip_vision", "vae", "dinov2")


def _shape(*dims):
    return jax.ShapeDtypeStruct(dims, np.float32)


# A small model tree exercising every leaf kind: Dense kernel (transposed), Conv kernel (OIHW -> HWIO), norm scale,
# embedding table, biases and named parameters, with indexed module names at several depths.
ABSTRACT = {
    "input_blocks_1_1": {"transformer_blocks_0": {"attn2": {
        "to_k_ip": {"kernel": _shape(5, 3)},
        "to_out_0": {"kernel": _shape(3, 5), "bias": _shape(5)},
    }}},
    "input_blocks_0_0": {"kernel": _shape(3, 3, 4, 6), "bias": _shape(6)},
    "ff": {"net_0": {"proj": {"kernel": _shape(5, 7)}}},
    "norm_out": {"scale": _shape(5), "bias": _shape(5)},
    "token_embedding": {"embedding": _shape(11, 5)},
    "layers_0_1_1": {"kernel": _shape(5, 9)},
    "latents": _shape(1, 4, 5),
}
# The same params as the official torch state dict names and shapes them.
TORCH_SHAPES = {
    "input_blocks.1.1.transformer_blocks.0.attn2.to_k_ip.weight": (3, 5),
    "input_blocks.1.1.transformer_blocks.0.attn2.to_out.0.weight": (5, 3),
    "input_blocks.1.1.transformer_blocks.0.attn2.to_out.0.bias": (5,),
    "input_blocks.0.0.weight": (6, 4, 3, 3),
    "input_blocks.0.0.bias": (6,),
    "ff.net.0.proj.weight": (7, 5),
    "norm_out.weight": (5,),
    "norm_out.bias": (5,),
    "token_embedding.weight": (11, 5),
    "layers.0.1.1.weight": (9, 5),
    "latents": (1, 4, 5),
}


def _state_dict(seed=0, dtype=np.float32):
    rng = np.random.default_rng(seed)
    return {key: rng.standard_normal(shape).astype(dtype) for key, shape in TORCH_SHAPES.items()}


@pytest.mark.parametrize("key, module, leaf", [
    ("input_blocks.1.1.transformer_blocks.0.attn2.to_k_ip.weight",
     ("input_blocks_1_1", "transformer_blocks_0", "attn2", "to_k_ip"), "weight"),
    ("ff.net.0.proj.bias", ("ff", "net_0", "proj"), "bias"),
    ("attn1.to_out.0.weight", ("attn1", "to_out_0"), "weight"),
    ("layers.0.1.1.weight", ("layers_0_1_1",), "weight"),
    ("latents", (), "latents"),
    ("vision_model.embeddings.class_embedding", ("vision_model", "embeddings"), "class_embedding"),
])
def test_torch_key_to_module_path(key, module, leaf):
    assert torch_key_to_module_path(key) == (module, leaf)


@pytest.mark.parametrize("path, key", [
    (("input_blocks_1_1", "transformer_blocks_0", "attn2", "to_k_ip", "kernel"),
     "input_blocks.1.1.transformer_blocks.0.attn2.to_k_ip.weight"),
    (("norm_out", "scale"), "norm_out.weight"),
    (("token_embedding", "embedding"), "token_embedding.weight"),
    (("layers_0_1_1", "kernel"), "layers.0.1.1.weight"),
    (("to_out_0", "bias"), "to_out.0.bias"),
    (("latents",), "latents"),
])
def test_flax_path_to_torch_key(path, key):
    assert flax_path_to_torch_key(path) == key


@pytest.mark.parametrize("name", MANIFEST_NAMES)
def test_every_release_key_survives_the_rename_round_trip(name):
    """Every key of every full-size release component maps to a Flax path that maps back to the same key."""
    keys = [entry["key"] for entry in json.loads((REFERENCE / "manifests" / f"{name}.json").read_text())["keys"]]
    for key in keys:
        module, leaf = torch_key_to_module_path(key)
        flax_leaf = "kernel" if leaf == "weight" else leaf
        assert flax_path_to_torch_key(module + (flax_leaf,)) == key


def test_layouts_dense_transposed_conv_oihw_to_hwio():
    state_dict = _state_dict()
    params = state_dict_to_params(state_dict, ABSTRACT, component="toy")
    dense = state_dict["input_blocks.1.1.transformer_blocks.0.attn2.to_k_ip.weight"]  # [out, in]
    np.testing.assert_array_equal(params["input_blocks_1_1"]["transformer_blocks_0"]["attn2"]["to_k_ip"]["kernel"],
                                  dense.T)
    conv = state_dict["input_blocks.0.0.weight"]                                           # [o, i, h, w]
    hwio = params["input_blocks_0_0"]["kernel"]
    assert hwio.shape == (3, 3, 4, 6)
    assert hwio[2, 0, 3, 5] == conv[5, 3, 2, 0]
    np.testing.assert_array_equal(params["norm_out"]["scale"], state_dict["norm_out.weight"])
    np.testing.assert_array_equal(params["token_embedding"]["embedding"], state_dict["token_embedding.weight"])
    np.testing.assert_array_equal(params["latents"], state_dict["latents"])


def test_array_layout_transforms_invert_each_other():
    rng = np.random.default_rng(1)
    for leaf, shape in [("kernel", (6, 4, 3, 2)), ("kernel", (7, 5)), ("scale", (5,)), ("latents", (1, 4, 5))]:
        array = rng.standard_normal(shape).astype(np.float32)
        np.testing.assert_array_equal(flax_to_torch_array(leaf, torch_to_flax_array(leaf, array)), array)


def test_state_dict_round_trip_is_bit_exact():
    state_dict = _state_dict()
    back = params_to_state_dict(state_dict_to_params(state_dict, ABSTRACT, component="toy"))
    assert set(back) == set(state_dict)
    for key, array in state_dict.items():
        assert back[key].dtype == np.float32 and back[key].shape == array.shape
        assert back[key].tobytes() == array.tobytes(), key


def test_params_round_trip_is_bit_exact():
    params = state_dict_to_params(_state_dict(seed=3), ABSTRACT, component="toy")
    again = state_dict_to_params(params_to_state_dict(params), ABSTRACT, component="toy")
    flat, flat_again = flatten(params), flatten(again)
    assert set(flat) == set(flat_again) == set(flatten(ABSTRACT))
    for path, value in flat.items():
        assert flat_again[path].tobytes() == value.tobytes(), path


def test_release_resampler_round_trip_is_bit_exact():
    """The real tiny release state dict survives torch -> flax -> torch unchanged (names, layouts, bytes)."""
    state_dict = read_safetensors(REFERENCE / "tiny_release" / "resampler" / "model.safetensors")
    abstract = {}
    for key, array in state_dict.items():
        module, leaf = torch_key_to_module_path(key)
        leaf = ("scale" if array.ndim == 1 else "kernel") if leaf == "weight" else leaf
        abstract[module + (leaf,)] = _shape(*torch_to_flax_array(leaf, array).shape)
    back = params_to_state_dict(state_dict_to_params(state_dict, unflatten(abstract), component="resampler"))
    assert set(back) == set(state_dict)
    assert all(back[k].tobytes() == np.ascontiguousarray(v).tobytes() for k, v in state_dict.items())


@pytest.mark.parametrize("dtype", [np.float16, ml_dtypes.bfloat16])
def test_half_precision_weights_are_cast_to_float32(dtype):
    state_dict = {k: v.astype(dtype) for k, v in _state_dict().items()}
    params = state_dict_to_params(state_dict, ABSTRACT, component="toy")
    for path, value in flatten(params).items():
        assert value.dtype == np.float32, path
    np.testing.assert_array_equal(params["norm_out"]["scale"], state_dict["norm_out.weight"].astype(np.float32))


def _key_error(state_dict, hint=""):
    with pytest.raises(CheckpointKeyError) as info:
        state_dict_to_params(state_dict, ABSTRACT, component="toy", hint=hint)
    return str(info.value)


def test_missing_unexpected_and_wrong_shape_are_listed_with_counts_and_hint():
    state_dict = _state_dict()
    del state_dict["latents"], state_dict["norm_out.bias"]
    state_dict["input_blocks.1.1.transformer_blocks.0.attn2.to_v_ip.weight"] = np.zeros((3, 5), np.float32)
    state_dict["ff.net.0.proj.weight"] = np.zeros((7, 6), np.float32)
    message = _key_error(state_dict, hint="did you pass the base MVDream UNet?")
    assert message.startswith("toy: ")
    assert "missing (2): latents, norm_out.bias" in message
    assert "unexpected (1): input_blocks.1.1.transformer_blocks.0.attn2.to_v_ip.weight" in message
    assert "wrong shape (1): ff.net.0.proj.weight (7, 6) (model expects (7, 5))" in message
    assert "hint: did you pass the base MVDream UNet?" in message
    # a wrong-shape tensor is reported once, not also as missing
    assert message.count("ff.net.0.proj.weight") == 1


def test_error_message_is_not_repr_quoted_and_is_a_key_error():
    state_dict = _state_dict()
    del state_dict["latents"]
    with pytest.raises(KeyError) as info:
        state_dict_to_params(state_dict, ABSTRACT, component="toy")
    assert isinstance(info.value, CheckpointKeyError)
    assert "\n" in str(info.value) and not str(info.value).startswith(("'", '"'))
    assert "hint" not in str(info.value)  # no hint given, none printed


def test_long_listings_show_first_ten_then_a_count():
    state_dict = _state_dict()
    for i in range(13):
        state_dict[f"extra.{i:02d}.weight"] = np.zeros((2,), np.float32)
    message = _key_error(state_dict)
    line = next(line for line in message.splitlines() if "unexpected" in line)
    assert line.strip().startswith("unexpected (13): extra.00.weight")
    assert "extra.09.weight" in line and "extra.10.weight" not in line
    assert line.endswith("... (+3 more)")


def test_empty_state_dict_reports_every_expected_key_missing():
    message = _key_error({})
    assert f"missing ({len(TORCH_SHAPES)}):" in message
    assert "unexpected" not in message and "wrong shape" not in message
