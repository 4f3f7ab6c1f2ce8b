"""The demo's starting checkpoint: the tiny release with the pooling VAE, sized for 8x8 latents of 32 px views."""

import json

from mvrag_jax.convert import load_model_checkpoint
from mvrag_jax.demo.base import SCALING_FACTOR, write_base_checkpoint
from tests.conftest import TINY_RELEASE


def test_base_checkpoint_has_the_pooling_vae_and_8x8_latents(tmp_path):
    out = write_base_checkpoint(TINY_RELEASE, tmp_path / "base")
    configs, params = load_model_checkpoint(out)
    vae, unet = configs["vae"], configs["unet"]
    assert (vae.downscale_factor, vae.block_out_channels, vae.scaling_factor) == (4, (8, 8, 8), SCALING_FACTOR)
    assert unet.image_size == 8  # 32 px views / 4
    raw = json.loads((out / "release_files" / "vae" / "config.json").read_text())
    assert raw["block_out_channels"] == [8, 8, 8] and raw["scaling_factor"] == SCALING_FACTOR
    assert json.loads((out / "release_files" / "unet" / "config.json").read_text())["image_size"] == 8
