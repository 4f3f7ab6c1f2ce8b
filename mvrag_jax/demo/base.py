"""The demo's starting checkpoint: the bundled tiny release's tokenizer, text and image encoders, with a demo-sized
random UNet, the analytic pooling VAE (pixel_vae.py) and the analytic colour DINOv2 (colour_dino.py).

    python -m mvrag_jax.demo.base --release tests/reference/tiny_release --out out/demo/base

It is an ordinary `mvrag convert` checkpoint (params, configs, release files with the rewritten component configs),
so `mvrag train --config.train.init` starts from it and `mvrag export` writes it back in the official layout.

Sizes (measured on this 2-core host, `make demo`'s 8 fake devices): 32 px views over a 2x pooling VAE diffuse as
16x16 latents, where a person can tell a cone from a cube (at 8x8 latents, 4x4 pixel blocks, they could not; the
scorer could barely). The UNet keeps the tiny release's widths but attends only at 8x8 and 4x4 (multiview
self-attention over 4 x 64 tokens): attention at 16x16 (4 x 256 tokens) made a training step ~10x slower.
"""

import dataclasses
import json
import pathlib
import sys
import tempfile

import jax
import flax.linen as nn

from mvrag_jax.convert import convert_release, load_model_checkpoint
from mvrag_jax.convert.checkpoint import check_target, save_checkpoint
from mvrag_jax.demo.colour_dino import colour_dino_config, colour_dino_params
from mvrag_jax.demo.pixel_vae import demo_vae_config, pixel_vae_params
from mvrag_jax.models import unet
from mvrag_jax.models.random_params import host_random_params

VAE_CONFIG = "vae/config.json"
UNET_CONFIG = "unet/config.json"
DINO_CONFIG = "facebook/dinov2-base/config.json"
# The demo UNet: the tiny release's widths, attention only at downsample rates 2 and 4 (see the module docstring).
DEMO_UNET = {"model_channels": 32, "num_res_blocks": 1, "channel_mult": (1, 2, 2), "attention_resolutions": (1, 2),
             "num_head_channels": 16}
VAE_LEVELS = 3    # 3 levels: 4x4 pixels per latent
VAE_WIDTH = 8     # the pooling VAE's zeroed convs run at full resolution: 8 wide costs least (>= 6 carried channels)
IMAGE_SIZE = 32
# The UNet's latents are the pooled pixels (in [-1, 1]) times this. ~3.5 (1 / the std of the demo's pooled views)
# would give them unit variance, as SD's 0.18215 does for its VAE; larger values raise the signal at every noise
# level, and after minutes of training the eps error at high noise is what spoils samples (x0 estimates scale it by
# 1 / sqrt(alpha_bar), ~15 at t=999). Measured at 8x8 latents after 400 steps (branch `demo`, commit c3f6818): 1.0
# and 3.5 sampled saturated noise in most views, 8 and 12 mostly the prompted colour.
SCALING_FACTOR = 12.0
UNET_SEED = 0


def _write_json(path: pathlib.Path, values: dict) -> pathlib.Path:
    path.write_text(json.dumps(values, indent=2))
    return path


def _rewrite(files_root: pathlib.Path, name: str, tmp: pathlib.Path, updates: dict) -> pathlib.Path:
    raw = json.loads((files_root / name).read_text())
    raw.update(updates)
    raw.pop("dtype", None)
    return _write_json(tmp / name.replace("/", "_"), raw)


def demo_unet_config(base: unet.UNetConfig, latent_side: int) -> unet.UNetConfig:
    return dataclasses.replace(base, image_size=latent_side, **DEMO_UNET)


def write_base_checkpoint(release_dir: str | pathlib.Path, out_dir: str | pathlib.Path, *,
                          vae_levels: int = VAE_LEVELS, image_size: int = IMAGE_SIZE, seed: int = UNET_SEED,
                          overwrite: bool = False) -> pathlib.Path:
    """Convert `release_dir`, then replace its UNet (random, DEMO_UNET sizes), VAE (pooling, `vae_levels` levels)
    and DINOv2 (colour_dino) and rewrite their release configs to match."""
    check_target(out_dir, overwrite)
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = pathlib.Path(tmp_name)
        converted = convert_release(release_dir, tmp / "ckpt", show_progress=False)
        configs, params = load_model_checkpoint(converted)
        vae = dataclasses.replace(demo_vae_config(configs["vae"], levels=vae_levels, width=VAE_WIDTH),
                                  scaling_factor=SCALING_FACTOR)
        configs["vae"], params["vae"] = vae, pixel_vae_params(vae)
        net = demo_unet_config(configs["unet"], image_size // vae.downscale_factor)
        configs["unet"] = net
        params["unet"] = host_random_params(nn.unbox(jax.eval_shape(unet.init_params, net, jax.random.key(0))), seed)
        dino = colour_dino_config(configs["dinov2"])
        configs["dinov2"], params["dinov2"] = dino, colour_dino_params(dino)

        files_root = converted / "release_files"
        release_files = {str(p.relative_to(files_root)): p for p in sorted(files_root.rglob("*")) if p.is_file()}
        release_files[VAE_CONFIG] = _rewrite(files_root, VAE_CONFIG, tmp, {
            "block_out_channels": list(vae.block_out_channels), "layers_per_block": vae.layers_per_block,
            "norm_num_groups": vae.norm_num_groups, "latent_channels": vae.latent_channels,
            "scaling_factor": vae.scaling_factor, "down_block_types": ["DownEncoderBlock2D"] * vae_levels,
            "up_block_types": ["UpDecoderBlock2D"] * vae_levels})
        release_files[UNET_CONFIG] = _rewrite(files_root, UNET_CONFIG, tmp, {
            "image_size": net.image_size, **{k: list(v) if isinstance(v, tuple) else v for k, v in DEMO_UNET.items()}})
        release_files[DINO_CONFIG] = _rewrite(files_root, DINO_CONFIG, tmp, {"layer_norm_eps": dino.layer_norm_eps})
        return save_checkpoint(out_dir, configs, params, release_files, overwrite=overwrite)


def main(argv: list[str]) -> int:
    import argparse
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--release", required=True, help="e.g. tests/reference/tiny_release (the bundled tiny release)")
    parser.add_argument("--out", required=True)
    parser.add_argument("--vae-levels", "--vae_levels", type=int, default=VAE_LEVELS)
    parser.add_argument("--overwrite", action="store_true")
    args = parser.parse_args(argv)
    try:
        print(f"wrote {write_base_checkpoint(args.release, args.out, vae_levels=args.vae_levels, overwrite=args.overwrite)}")
    except (ValueError, FileNotFoundError) as e:
        print(f"demo base: error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
