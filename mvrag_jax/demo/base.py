"""The demo's starting checkpoint: the bundled tiny random release with the analytic pooling VAE (pixel_vae.py).

    python -m mvrag_jax.demo.base --release tests/reference/tiny_release --out out/demo/base

It is an ordinary `mvrag convert` checkpoint (params, configs, release files with the VAE's config.json rewritten to
match), so `mvrag train --config.train.init` starts from it and `mvrag export` writes it back in the official layout.
"""

import dataclasses
import json
import pathlib
import sys
import tempfile

from mvrag_jax.convert import convert_release, load_model_checkpoint
from mvrag_jax.convert.checkpoint import check_target, save_checkpoint
from mvrag_jax.demo.pixel_vae import demo_vae_config, pixel_vae_params

VAE_CONFIG = "vae/config.json"
# The UNet's latents are the pooled pixels (in [-1, 1]) times this. 1 / 0.29 (3.5, the std of the demo's pooled
# training views) would give them unit variance, as SD's 0.18215 does for its VAE; larger values raise the signal
# at every noise level, and after minutes of training the eps error at high noise is what spoils samples (their
# x0 estimates scale it by 1 / sqrt(alpha_bar), ~15 at t=999). Measured after 400 steps (README, "What make demo
# does"): 1.0 and 3.5 sample saturated noise in most views; 8 and 12 mostly the prompted colour.
SCALING_FACTOR = 12.0
UNET_CONFIG = "unet/config.json"


def _write_json(path: pathlib.Path, values: dict) -> pathlib.Path:
    path.write_text(json.dumps(values, indent=2))
    return path


def write_base_checkpoint(release_dir: str | pathlib.Path, out_dir: str | pathlib.Path, *, vae_levels: int = 3,
                          vae_width: int = 8, image_size: int = 32, scaling_factor: float = SCALING_FACTOR,
                          overwrite: bool = False) -> pathlib.Path:
    """Convert `release_dir` and swap its VAE for the pooling autoencoder with `vae_levels` resolution levels of
    `vae_width` channels (3: 4x4 pixels per latent, so 32 px views diffuse as 8x8 latents; configs/train.py
    size=demo says why). The UNet's image_size (its latent side, from which the pipeline sizes its output) follows."""
    check_target(out_dir, overwrite)
    with tempfile.TemporaryDirectory() as tmp:
        converted = convert_release(release_dir, pathlib.Path(tmp) / "ckpt", show_progress=False)
        configs, params = load_model_checkpoint(converted)
        vae = demo_vae_config(configs["vae"], levels=vae_levels, width=vae_width, scaling_factor=scaling_factor)
        configs["vae"], params["vae"] = vae, pixel_vae_params(vae)
        latent_side = image_size // vae.downscale_factor
        configs["unet"] = dataclasses.replace(configs["unet"], image_size=latent_side)
        files_root = converted / "release_files"
        release_files = {str(p.relative_to(files_root)): p for p in sorted(files_root.rglob("*")) if p.is_file()}
        raw = json.loads((files_root / VAE_CONFIG).read_text())
        raw.update({k: v for k, v in dataclasses.asdict(vae).items() if k in raw or k == "norm_num_groups"})
        raw["block_out_channels"] = list(vae.block_out_channels)
        raw["down_block_types"] = ["DownEncoderBlock2D"] * vae_levels
        raw["up_block_types"] = ["UpDecoderBlock2D"] * vae_levels
        raw.pop("dtype", None)
        release_files[VAE_CONFIG] = _write_json(pathlib.Path(tmp) / "vae_config.json", raw)
        unet = json.loads((files_root / UNET_CONFIG).read_text())
        unet["image_size"] = latent_side
        release_files[UNET_CONFIG] = _write_json(pathlib.Path(tmp) / "unet_config.json", unet)
        return save_checkpoint(out_dir, configs, params, release_files, overwrite=overwrite)


def main(argv: list[str]) -> int:
    import argparse
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--release", required=True, help="e.g. tests/reference/tiny_release (the bundled tiny release)")
    parser.add_argument("--out", required=True)
    parser.add_argument("--vae_levels", type=int, default=3, help="3: 4x4 pixels per latent")
    parser.add_argument("--vae_width", type=int, default=8, help="channels of every VAE level (>= 6)")
    parser.add_argument("--overwrite", action="store_true")
    args = parser.parse_args(argv)
    try:
        written = write_base_checkpoint(args.release, args.out, vae_levels=args.vae_levels, vae_width=args.vae_width,
                                        overwrite=args.overwrite)
        print(f"wrote {written}")
    except (ValueError, FileNotFoundError) as e:
        print(f"demo base: error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
