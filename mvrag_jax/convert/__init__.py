"""Official PyTorch release <-> our Flax params <-> orbax checkpoints."""

import pathlib

from tqdm import tqdm

from mvrag_jax.convert.checkpoint import CheckpointError, check_target, load_checkpoint, save_checkpoint
from mvrag_jax.convert.components import COMPONENTS, convert_component, release_components
from mvrag_jax.convert.export import EXPORT_DTYPES, export_release
from mvrag_jax.convert.init_checkpoint import convert_init
from mvrag_jax.convert.keys import CheckpointKeyError
from mvrag_jax.inputs.release import Release, ReleaseError

# Files that carry weights; everything else in a release (configs, tokenizer, processors) is copied verbatim.
_WEIGHT_SUFFIXES = (".safetensors", ".bin", ".ckpt", ".pt", ".pth", ".msgpack", ".h5")


def convert_release(release_dir: str | pathlib.Path, out_dir: str | pathlib.Path, *, overwrite: bool = False,
                    show_progress: bool = True) -> pathlib.Path:
    """Convert every component of an official release into an mvrag checkpoint at `out_dir` (written atomically).

    A text-only base release (UNet without to_k_ip/to_v_ip) may lack the resampler, image encoder and DINOv2.
    """
    release = Release.open(release_dir)
    check_target(out_dir, overwrite)  # before converting, not after six components' worth of work
    configs, params = {}, {}
    for component in tqdm(release_components(release), desc="converting", unit="component", disable=not show_progress):
        configs[component.name], params[component.name] = convert_component(release, component)
    release_files = {str(p.relative_to(release.root)): p for p in sorted(release.root.rglob("*"))
                     if p.is_file() and p.suffix not in _WEIGHT_SUFFIXES}
    return save_checkpoint(out_dir, configs, params, release_files, overwrite=overwrite)


def load_model_checkpoint(ckpt_dir: str | pathlib.Path) -> tuple[dict, dict]:
    """(configs, params) per component of a checkpoint written by `convert_release`."""
    return load_checkpoint(ckpt_dir, {c.name: c.config_class for c in COMPONENTS})


def export_checkpoint(ckpt_dir: str | pathlib.Path, out_dir: str | pathlib.Path, *, dtype: str = "fp32",
                      overwrite: bool = False) -> pathlib.Path:
    """`mvrag export`: a converted (or trained) checkpoint -> the official release layout at `out_dir`."""
    check_target(out_dir, overwrite)
    _, params = load_model_checkpoint(ckpt_dir)
    return export_release(ckpt_dir, params, out_dir, dtype=dtype, overwrite=overwrite)


__all__ = ["CheckpointError", "CheckpointKeyError", "EXPORT_DTYPES", "Release", "ReleaseError", "convert_init",
           "convert_release",
           "export_checkpoint", "load_model_checkpoint"]
