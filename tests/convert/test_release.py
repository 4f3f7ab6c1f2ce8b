import json

import ml_dtypes
import numpy as np
import pytest

from mvrag_jax.inputs.release import Release, ReleaseError, read_safetensors, write_safetensors
from tests.conftest import TINY_RELEASE


def test_safetensors_round_trip_all_float_dtypes(tmp_path):
    tensors = {"a.weight": np.arange(12, dtype=np.float32).reshape(3, 4),
               "b": np.linspace(-2, 2, 5).astype(np.float16),
               "c": np.linspace(-2, 2, 7).astype(ml_dtypes.bfloat16),
               "ids": np.arange(3, dtype=np.int64)}
    write_safetensors(tmp_path / "x.safetensors", tensors)
    back = read_safetensors(tmp_path / "x.safetensors")
    assert sorted(back) == sorted(tensors)
    for key, value in tensors.items():
        assert back[key].dtype == value.dtype
        np.testing.assert_array_equal(back[key], value)


def test_written_file_loads_with_the_safetensors_library(tmp_path):
    safetensors_numpy = pytest.importorskip("safetensors.numpy")
    tensors = {"w": np.random.default_rng(0).normal(size=(5, 3)).astype(np.float32)}
    write_safetensors(tmp_path / "x.safetensors", tensors)
    np.testing.assert_array_equal(safetensors_numpy.load_file(str(tmp_path / "x.safetensors"))["w"], tensors["w"])


def test_truncated_file_is_a_clear_error(tmp_path):
    write_safetensors(tmp_path / "x.safetensors", {"w": np.zeros((64, 64), np.float32)})
    data = (tmp_path / "x.safetensors").read_bytes()
    (tmp_path / "x.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(ReleaseError, match="truncated"):
        read_safetensors(tmp_path / "x.safetensors")


def test_open_errors_name_the_problem(tmp_path):
    with pytest.raises(ReleaseError, match="does not exist"):
        Release.open(tmp_path / "missing")
    (tmp_path / "file").write_text("x")
    with pytest.raises(ReleaseError, match="not a directory"):
        Release.open(tmp_path / "file")
    with pytest.raises(ReleaseError, match="model_index.json"):
        Release.open(tmp_path)


def test_missing_component_folder_and_bad_json(tmp_path):
    (tmp_path / "model_index.json").write_text(json.dumps({}))
    release = Release.open(tmp_path)
    with pytest.raises(ReleaseError, match="unet/"):
        release.weights("unet")
    (tmp_path / "unet").mkdir()
    with pytest.raises(ReleaseError, match="no .safetensors"):
        release.weights("unet")
    (tmp_path / "unet" / "config.json").write_text("{not json")
    with pytest.raises(ReleaseError, match="not valid JSON"):
        release.config("unet")


def test_reads_the_tiny_release():
    release = Release.open(TINY_RELEASE)
    assert release.config("unet")["model_channels"] == 32
    assert release.config("dinov2")["patch_size"] == 7  # facebook/dinov2-base inside the release
    assert "latents" in release.weights("resampler")


def test_shapes_come_from_headers_and_match_the_tensors():
    release = Release.open(TINY_RELEASE)
    weights = release.weights("unet")
    assert release.shapes("unet") == {key: value.shape for key, value in weights.items()}


def test_scalar_tensors_keep_their_empty_shape(tmp_path):
    # CLIPModel's logit_scale is 0-d; writing it as [1] makes transformers refuse the file (size mismatch).
    write_safetensors(tmp_path / "x.safetensors", {"logit_scale": np.asarray(2.5, np.float32)})
    loaded = read_safetensors(tmp_path / "x.safetensors")["logit_scale"]
    assert loaded.shape == () and loaded == np.float32(2.5)
