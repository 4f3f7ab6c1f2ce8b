"""Export an mvrag checkpoint back to the official on-disk layout, so PyTorch users load it unchanged."""

import pathlib

import ml_dtypes
import numpy as np
from tqdm import tqdm

from mvrag_jax.convert.checkpoint import CheckpointError, atomic_directory
from mvrag_jax.convert.keys import params_to_state_dict
from mvrag_jax.inputs.release import COMPONENT_FOLDERS, WEIGHTS_FILES, write_safetensors
from mvrag_jax.errors import UsageError

EXPORT_DTYPES = {"fp32": np.float32, "fp16": np.float16, "bf16": ml_dtypes.bfloat16}


def export_release(ckpt_dir: str | pathlib.Path, params: dict, out_dir: str | pathlib.Path, *, dtype: str = "fp32",
                   overwrite: bool = False, show_progress: bool = True) -> pathlib.Path:
    """Write `params` ({component: tree}) as an official release at `out_dir`, atomically.

    Configs, tokenizer, scheduler and processor files come from the checkpoint's `release_files/` (the release it was
    converted from); weights are written in the official key names and layouts, cast to `dtype`.
    """
    if dtype not in EXPORT_DTYPES:
        raise UsageError(f"export dtype {dtype!r} is not one of {sorted(EXPORT_DTYPES)}")
    release_files = pathlib.Path(ckpt_dir) / "release_files"
    if not (release_files / "model_index.json").is_file():
        raise CheckpointError(f"{ckpt_dir} has no release_files/model_index.json, so the release configs to export "
                              "with are unknown; re-create the checkpoint with `mvrag convert`")
    with atomic_directory(out_dir, overwrite) as tmp:
        for src in sorted(release_files.rglob("*")):
            dst = tmp / src.relative_to(release_files)
            if src.is_dir():
                dst.mkdir(parents=True, exist_ok=True)
            elif not src.name.endswith(".safetensors.index.json"):  # weights are re-written as single files
                dst.parent.mkdir(parents=True, exist_ok=True)
                dst.write_bytes(src.read_bytes())
        for name in tqdm(sorted(params), desc="exporting", unit="component", disable=not show_progress):
            if name not in COMPONENT_FOLDERS:
                raise CheckpointError(f"checkpoint component {name!r} has no official release folder")
            state_dict = {k: v.astype(EXPORT_DTYPES[dtype]) if np.issubdtype(v.dtype, np.floating) else v
                          for k, v in params_to_state_dict(params[name]).items()}
            folder = tmp / COMPONENT_FOLDERS[name]
            folder.mkdir(parents=True, exist_ok=True)
            write_safetensors(folder / WEIGHTS_FILES[name], state_dict)
    return pathlib.Path(out_dir)
