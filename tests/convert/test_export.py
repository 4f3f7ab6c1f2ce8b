import json
import shutil

import ml_dtypes
import numpy as np
import pytest

from mvrag_jax.convert import (COMPONENTS, CheckpointError, Release, convert_release, export_checkpoint,
                               load_model_checkpoint)
from mvrag_jax.inputs.release import COMPONENT_FOLDERS, read_safetensors
from tests.conftest import TINY_RELEASE


def test_release_convert_export_round_trip_is_bit_exact(tiny_ckpt, tmp_path):
    out = export_checkpoint(tiny_ckpt, tmp_path / "exported")
    original, exported = Release.open(TINY_RELEASE), Release.open(out)
    for component in COMPONENTS:
        before, after = original.weights(component.name), exported.weights(component.name)
        assert sorted(before) == sorted(after), component.name
        for key in before:
            assert after[key].dtype == np.float32
            np.testing.assert_array_equal(after[key], before[key].astype(np.float32), err_msg=key)
    # Every non-weight file (configs, tokenizer, scheduler, processors) comes back byte for byte.
    for path in TINY_RELEASE.rglob("*"):
        if path.is_file() and path.suffix != ".safetensors":
            assert (out / path.relative_to(TINY_RELEASE)).read_bytes() == path.read_bytes(), path


def test_exported_release_converts_back_to_the_same_params(tiny_ckpt, tmp_path):
    out = export_checkpoint(tiny_ckpt, tmp_path / "exported")
    again = convert_release(out, tmp_path / "again", show_progress=False)
    (configs_a, params_a), (configs_b, params_b) = load_model_checkpoint(tiny_ckpt), load_model_checkpoint(again)
    assert configs_a == configs_b
    leaves_a, leaves_b = (jax_leaves(p) for p in (params_a, params_b))
    assert len(leaves_a) == len(leaves_b)
    for a, b in zip(leaves_a, leaves_b):
        np.testing.assert_array_equal(a, b)


def jax_leaves(tree):
    import jax
    return jax.tree.leaves(tree)


@pytest.mark.parametrize("dtype,np_dtype", [("fp16", np.float16), ("bf16", ml_dtypes.bfloat16)])
def test_half_precision_export(tiny_ckpt, tmp_path, dtype, np_dtype):
    out = export_checkpoint(tiny_ckpt, tmp_path / dtype, dtype=dtype)
    name = COMPONENTS[0].name
    weights = Release.open(out).weights(name)
    original = Release.open(TINY_RELEASE).weights(name)
    for key, value in weights.items():
        assert value.dtype == np_dtype
        np.testing.assert_array_equal(value, original[key].astype(np_dtype))


def test_export_refuses_existing_target_and_leaves_it_untouched(tiny_ckpt, tmp_path):
    target = tmp_path / "exported"
    target.mkdir()
    (target / "keep.txt").write_text("mine")
    with pytest.raises(CheckpointError, match="--overwrite"):
        export_checkpoint(tiny_ckpt, target)
    assert [p.name for p in target.iterdir()] == ["keep.txt"]


def test_export_of_incomplete_checkpoint_fails_without_output(tiny_ckpt, tmp_path):
    broken = tmp_path / "broken"
    shutil.copytree(tiny_ckpt, broken)
    shutil.rmtree(broken / "release_files")
    with pytest.raises(CheckpointError, match="release_files"):
        export_checkpoint(broken, tmp_path / "out")
    assert not (tmp_path / "out").exists()
    with pytest.raises(CheckpointError, match="not an mvrag checkpoint"):
        export_checkpoint(TINY_RELEASE, tmp_path / "out")  # a release is not a checkpoint


def test_exported_files_sit_where_the_official_loaders_look(tiny_ckpt, tmp_path):
    out = export_checkpoint(tiny_ckpt, tmp_path / "exported")
    index = json.loads((out / "model_index.json").read_text())
    assert index["_class_name"] == "MVRAGPipeline"
    for component in COMPONENTS:
        files = list((out / COMPONENT_FOLDERS[component.name]).glob("*.safetensors"))
        assert len(files) == 1 and read_safetensors(files[0])


def test_trained_weights_are_what_gets_exported(tiny_ckpt, tmp_path):
    """A checkpoint whose to_k_ip and resampler weights changed (as training changes them) exports those values."""
    from mvrag_jax.convert.export import export_release
    from mvrag_jax.convert.keys import flatten, unflatten

    _, params = load_model_checkpoint(tiny_ckpt)
    trained = {}
    for name, tree in params.items():
        flat = flatten(tree)
        for path in flat:
            if name == "resampler" or path[-2] in ("to_k_ip", "to_v_ip"):
                flat[path] = flat[path] + np.float32(0.5)
        trained[name] = unflatten(flat)
    out = export_release(tiny_ckpt, trained, tmp_path / "exported", show_progress=False)
    original, exported = Release.open(TINY_RELEASE), Release.open(out)
    ip_key = next(k for k in exported.weights("unet") if k.endswith("attn2.to_k_ip.weight"))
    np.testing.assert_array_equal(exported.weights("unet")[ip_key], original.weights("unet")[ip_key] + 0.5)
    np.testing.assert_array_equal(exported.weights("resampler")["latents"], original.weights("resampler")["latents"] + 0.5)
    frozen_key = ip_key.replace("to_k_ip", "to_k")
    np.testing.assert_array_equal(exported.weights("unet")[frozen_key], original.weights("unet")[frozen_key])
