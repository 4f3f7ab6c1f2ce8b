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


def write_base_checkpoint(release_dir: str | pathlib.Path, out_dir: str | pathlib.Path, *,
                          overwrite: bool = False) -> pathlib.Path:
    """Convert `release_dir` and swap its VAE for the pooling autoencoder (same number of resolution levels)."""
    check_target(out_dir, overwrite)
    with tempfile.TemporaryDirectory() as tmp:
        converted = convert_release(release_dir, pathlib.Path(tmp) / "ckpt", show_progress=False)
        configs, params = load_model_checkpoint(converted)
        vae = demo_vae_config(configs["vae"], levels=len(configs["vae"].block_out_channels))
        configs["vae"], params["vae"] = vae, pixel_vae_params(vae)
        files_root = converted / "release_files"
        release_files = {str(p.relative_to(files_root)): p for p in sorted(files_root.rglob("*")) if p.is_file()}
        raw = json.loads((files_root / VAE_CONFIG).read_text())
        raw.update({k: v for k, v in dataclasses.asdict(vae).items() if k in raw or k == "norm_num_groups"})
        raw["block_out_channels"] = list(vae.block_out_channels)
        raw.pop("dtype", None)
        vae_json = pathlib.Path(tmp) / "vae_config.json"
        vae_json.write_text(json.dumps(raw, indent=2))
        release_files[VAE_CONFIG] = vae_json
        return save_checkpoint(out_dir, configs, params, release_files, overwrite=overwrite)


def main(argv: list[str]) -> int:
    import argparse
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--release", default="tests/reference/tiny_release")
    parser.add_argument("--out", required=True)
    parser.add_argument("--overwrite", action="store_true")
    args = parser.parse_args(argv)
    try:
        print(f"wrote {write_base_checkpoint(args.release, args.out, overwrite=args.overwrite)}")
    except (ValueError, FileNotFoundError) as e:
        print(f"demo base: error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
