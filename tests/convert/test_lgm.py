"""mvrag_jax/convert/lgm.py: the released LGM safetensors -> Flax params and back, key errors, bad files."""

import numpy as np
import pytest

from mvrag_jax.convert import CheckpointKeyError
from mvrag_jax.convert import lgm as convert_lgm
from mvrag_jax.inputs.release import read_safetensors, write_safetensors
from tests.conftest import REFERENCE

TINY = REFERENCE / "lgm_tiny" / "model_fp16.safetensors"


def test_round_trip_is_bit_exact(tmp_path):
    config, params = convert_lgm.load_lgm(TINY, input_size=16)
    out = convert_lgm.export_lgm(params, tmp_path / "again.safetensors", dtype="fp16")
    original, again = read_safetensors(TINY), read_safetensors(out)
    assert sorted(original) == sorted(again)
    for key in original:
        assert again[key].dtype == np.float16
        np.testing.assert_array_equal(original[key], again[key], err_msg=key)
    assert not list(tmp_path.glob("*.tmp"))


def test_conv_and_linear_layouts(tmp_path):
    _, params = convert_lgm.load_lgm(TINY, input_size=16)
    state = read_safetensors(TINY)
    conv = state["unet.conv_in.weight"].astype(np.float32)                              # [out, in, kh, kw]
    np.testing.assert_array_equal(params["unet"]["conv_in"]["kernel"], conv.transpose(2, 3, 1, 0))
    qkv = state["unet.mid_block.attns.0.attn.qkv.weight"].astype(np.float32)            # [3c, c]
    np.testing.assert_array_equal(params["unet"]["mid_block"]["attns_0"]["attn"]["qkv"]["kernel"], qkv.T)


def test_training_only_lpips_keys_are_ignored_and_missing_keys_listed(tmp_path):
    state = dict(read_safetensors(TINY))
    state["lpips_loss.net.slice1.0.weight"] = np.zeros((2, 2), np.float16)
    write_safetensors(tmp_path / "with_lpips.safetensors", state)
    convert_lgm.load_lgm(tmp_path / "with_lpips.safetensors", input_size=16)
    del state["conv.bias"]
    write_safetensors(tmp_path / "broken.safetensors", state)
    with pytest.raises(CheckpointKeyError, match=r"missing \(1\): conv.bias"):
        convert_lgm.load_lgm(tmp_path / "broken.safetensors", input_size=16)


def test_bad_files_name_the_fix(tmp_path):
    with pytest.raises(convert_lgm.LGMCheckpointError, match="model_fp16_fixrot.safetensors"):
        convert_lgm.load_lgm(tmp_path / "absent.safetensors")
    (tmp_path / "model.pt").write_bytes(b"x")
    with pytest.raises(convert_lgm.LGMCheckpointError, match="not a .safetensors"):
        convert_lgm.load_lgm(tmp_path / "model.pt")
    write_safetensors(tmp_path / "other.safetensors", {"vae.weight": np.zeros((2,), np.float32)})
    with pytest.raises(Exception, match="LGM"):
        convert_lgm.load_lgm(tmp_path / "other.safetensors")
