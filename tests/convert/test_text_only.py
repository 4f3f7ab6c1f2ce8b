"""A text-only base release (MVDream-style UNet without to_k_ip/to_v_ip, no resampler / image encoder / DINOv2)
converts, checkpoints and exports; an MV-RAG release missing its retrieval branch is still an error."""

import dataclasses
import shutil

import numpy as np
import pytest

from mvrag_jax.convert import convert_release, export_checkpoint, load_model_checkpoint
from mvrag_jax.convert.checkpoint import config_from_dict
from mvrag_jax.convert.components import release_components
from mvrag_jax.models.unet import UNetConfig
from mvrag_jax.inputs.release import Release, ReleaseError, read_safetensors
from tests.conftest import TINY_RELEASE, write_text_only_release


def test_base_release_converts_without_the_retrieval_branch(tmp_path):
    release = write_text_only_release(tmp_path / "base")
    assert [c.name for c in release_components(Release.open(release))] == ["unet", "clip_text", "vae"]
    ckpt = convert_release(release, tmp_path / "ckpt", show_progress=False)
    configs, params = load_model_checkpoint(ckpt)
    assert sorted(params) == ["clip_text", "unet", "vae"]
    assert configs["unet"].image_branch is False
    attn2 = params["unet"]["input_blocks_1_1"]["transformer_blocks_0"]["attn2"]
    assert "to_k_ip" not in attn2 and "to_q" in attn2

    out = export_checkpoint(ckpt, tmp_path / "exported")
    exported = read_safetensors(out / "unet" / "diffusion_pytorch_model.safetensors")
    original = read_safetensors(release / "unet" / "diffusion_pytorch_model.safetensors")
    assert sorted(exported) == sorted(original)
    for key, value in original.items():
        np.testing.assert_array_equal(exported[key], value, err_msg=key)
    assert not (out / "resampler").exists()


def test_mvrag_release_without_its_resampler_is_an_error(tmp_path):
    root = tmp_path / "release"
    shutil.copytree(TINY_RELEASE, root, ignore=lambda folder, names: ["resampler"] if folder == str(TINY_RELEASE)
                    else [])
    with pytest.raises(ReleaseError, match="resampler"):
        convert_release(root, tmp_path / "ckpt", show_progress=False)


def test_checkpoint_configs_written_before_image_branch_read_as_mvrag():
    values = dataclasses.asdict(UNetConfig.from_release(Release.open(TINY_RELEASE)))
    assert values.pop("image_branch") is True
    assert config_from_dict(UNetConfig, values).image_branch is True
