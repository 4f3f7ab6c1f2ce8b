"""mvrag_jax/convert/components.py: converting release components, and every way a release can be wrong."""

import pathlib
import shutil

import jax
import ml_dtypes
import numpy as np
import pytest

from configs import tiny
from mvrag_jax.convert.components import COMPONENTS_BY_NAME, abstract_params, convert_component
from mvrag_jax.convert.keys import CheckpointKeyError, flatten, params_to_state_dict, unflatten
from mvrag_jax.inputs.release import Release, ReleaseError, read_safetensors, write_safetensors
from mvrag_jax.models.resampler import ResamplerConfig, resample
from tests.conftest import CASES, TINY_RELEASE

RESAMPLER = COMPONENTS_BY_NAME["resampler"]


def _copy_release(tmp_path: pathlib.Path) -> pathlib.Path:
    root = tmp_path / "release"
    shutil.copytree(TINY_RELEASE, root)
    return root


def _rewrite_resampler(root: pathlib.Path, edit) -> Release:
    """Rewrite resampler/model.safetensors as `edit(tensors)` returns it."""
    path = root / "resampler" / "model.safetensors"
    write_safetensors(path, edit(dict(read_safetensors(path))))
    return Release.open(root)


def _key_error(release: Release, component=RESAMPLER) -> str:
    with pytest.raises(CheckpointKeyError) as info:
        convert_component(release, component)
    return str(info.value)


@pytest.mark.parametrize("name", ["unet", "resampler"])
def test_tiny_release_converts_to_its_config_and_back_bit_exact(name):
    release = Release.open(TINY_RELEASE)
    component = COMPONENTS_BY_NAME[name]
    config, params = convert_component(release, component)
    assert config == component.config_class.from_config(tiny.get_config())
    expected = {path: leaf.shape for path, leaf in flatten(abstract_params(component, config)).items()}
    assert {path: value.shape for path, value in flatten(params).items()} == expected
    assert all(value.dtype == np.float32 for value in flatten(params).values())
    stored = component.normalize_keys(release.weights(name))
    back = params_to_state_dict(params)
    assert set(back) == set(stored)
    for key, array in stored.items():
        assert back[key].tobytes() == np.ascontiguousarray(array, np.float32).tobytes(), key


def test_missing_tensor_is_a_key_error_naming_it(tmp_path):
    release = _rewrite_resampler(_copy_release(tmp_path),
                                 lambda t: {k: v for k, v in t.items() if k != "layers.1.1.3.weight"})
    message = _key_error(release)
    assert "missing (1): layers.1.1.3.weight" in message
    assert "unexpected" not in message and "wrong shape" not in message
    assert "hint: " + RESAMPLER.hint in message


def test_missing_latents_with_config_json_is_a_key_error(tmp_path):
    """A tensor that sizes are read from may be absent when config.json gives them: the key check reports it."""
    release = _rewrite_resampler(_copy_release(tmp_path), lambda t: {k: v for k, v in t.items() if k != "latents"})
    assert "missing (1): latents" in _key_error(release)


def test_wrong_shape_tensor_is_a_key_error_with_both_shapes(tmp_path):
    release = _rewrite_resampler(_copy_release(tmp_path),
                                 lambda t: t | {"proj_out.bias": np.zeros((31,), np.float32)})
    message = _key_error(release)
    assert "wrong shape (1): proj_out.bias (31,) (model expects (32,))" in message
    assert "missing" not in message


def test_unexpected_tensor_is_a_key_error(tmp_path):
    release = _rewrite_resampler(_copy_release(tmp_path),
                                 lambda t: t | {"layers.0.0.to_k_ip.weight": np.zeros((32, 32), np.float32)})
    message = _key_error(release)
    assert "unexpected (1): layers.0.0.to_k_ip.weight" in message
    assert "missing" not in message


def test_unet_without_image_projections_points_at_the_base_mvdream_unet(tmp_path):
    root = _copy_release(tmp_path)
    path = root / "unet" / "diffusion_pytorch_model.safetensors"
    tensors = read_safetensors(path)
    write_safetensors(path, {k: v for k, v in tensors.items() if "_ip." not in k})
    dropped = sum("_ip." in k for k in tensors)
    message = _key_error(Release.open(root), COMPONENTS_BY_NAME["unet"])
    assert dropped > 0 and f"missing ({dropped}):" in message
    assert "MVDream" in message


def test_release_path_that_is_a_file_is_rejected(tmp_path):
    not_a_dir = tmp_path / "release.safetensors"
    not_a_dir.write_bytes(b"")
    with pytest.raises(ReleaseError, match="not a directory"):
        Release.open(not_a_dir)


def test_release_without_model_index_is_rejected(tmp_path):
    root = _copy_release(tmp_path)
    (root / "model_index.json").unlink()
    with pytest.raises(ReleaseError, match="model_index.json"):
        Release.open(root)


def test_missing_release_directory_is_rejected(tmp_path):
    with pytest.raises(ReleaseError, match="does not exist"):
        Release.open(tmp_path / "nowhere")


@pytest.mark.parametrize("dtype", [np.float16, ml_dtypes.bfloat16])
def test_half_precision_weights_convert_to_float32_with_same_outputs(tmp_path, dtype):
    release = _rewrite_resampler(_copy_release(tmp_path), lambda t: {k: v.astype(dtype) for k, v in t.items()})
    assert {v.dtype for v in release.weights("resampler").values()} == {np.dtype(dtype)}
    config, params = convert_component(release, RESAMPLER)
    reference_config, reference_params = convert_component(Release.open(TINY_RELEASE), RESAMPLER)
    assert config == reference_config
    for path, value in flatten(params).items():
        assert value.dtype == np.float32
        np.testing.assert_array_equal(value, flatten(reference_params)[path].astype(dtype).astype(np.float32))
    case = np.load(CASES / "resampler.npz")
    with jax.default_matmul_precision("highest"):
        ours = np.asarray(resample(config, params, case["x_clip"]))
    # Weights carry one rounding of relative size eps; LayerNorm-ed O(1) tokens move by a few eps.
    eps = float(ml_dtypes.finfo(dtype).eps)
    np.testing.assert_allclose(ours, case["tokens_clip"], atol=8 * eps, rtol=8 * eps)


def test_resampler_without_config_json_takes_sizes_from_shapes(tmp_path):
    """The official loader ignores config.json; without one every size comes from the tensors (dim_head=64)."""
    config = ResamplerConfig(dim=32, depth=3, dim_head=64, heads=2, num_queries=5, embedding_dim=48, output_dim=24,
                             ff_mult=2)
    rng = np.random.default_rng(0)
    shapes = flatten(abstract_params(RESAMPLER, config))
    state_dict = params_to_state_dict(unflatten({path: rng.standard_normal(s.shape).astype(np.float32)
                                                 for path, s in shapes.items()}))
    root = _copy_release(tmp_path)
    (root / "resampler" / "config.json").unlink()
    write_safetensors(root / "resampler" / "model.safetensors", state_dict)
    converted_config, params = convert_component(Release.open(root), RESAMPLER)
    assert converted_config == config
    assert "no config.json" in converted_config.source and "dim_head=64" in converted_config.source
    back = params_to_state_dict(params)
    assert all(back[k].tobytes() == v.tobytes() for k, v in state_dict.items())
