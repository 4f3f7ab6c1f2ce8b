"""Reading the official MV-RAG release from disk (diffusers-style folders, safetensors weights, JSON configs).

Models, the pipeline and the converter all stand on this reader; it imports nothing else of ours.

The release is the source of truth for every size: configs come from its files (or, where the official code ignores
them, from tensor shapes), never from assumptions about the published model.
"""

import dataclasses
import json
import os
import pathlib
import struct
from typing import Any

import ml_dtypes
import numpy as np

from mvrag_jax.errors import MvragError

# Release folder of each component we convert (DINOv2 sits at the hub id the official f_score.py loads by name).
COMPONENT_FOLDERS = {
    "unet": "unet",
    "resampler": "resampler",
    "clip_text": "text_encoder",
    "clip_vision": "image_encoder",
    "vae": "vae",
    "dinov2": "facebook/dinov2-base",
}

# The weights file each component is exported to (the names the official loaders look for).
WEIGHTS_FILES = {
    "unet": "diffusion_pytorch_model.safetensors",
    "resampler": "model.safetensors",
    "clip_text": "model.safetensors",
    "clip_vision": "model.safetensors",
    "vae": "diffusion_pytorch_model.safetensors",
    "dinov2": "model.safetensors",
}

_SAFETENSORS_DTYPES = {
    "F64": np.float64, "F32": np.float32, "F16": np.float16, "BF16": ml_dtypes.bfloat16,
    "I64": np.int64, "I32": np.int32, "I16": np.int16, "I8": np.int8, "U8": np.uint8, "BOOL": np.bool_,
}


class ReleaseError(MvragError, ValueError):
    """The release directory is missing, incomplete or unreadable."""


def _read_header(f, path: pathlib.Path) -> dict[str, Any]:
    try:
        (header_size,) = struct.unpack("<Q", f.read(8))
        header = json.loads(f.read(header_size))
    except (struct.error, json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ReleaseError(f"cannot read safetensors file {path}: {e}; re-download or re-export that file") from e
    header.pop("__metadata__", None)
    return header


class NonFiniteWeightsError(MvragError, ValueError):
    """A weight tensor holds NaN or Inf (a broken download, a diverged run): it would generate black views."""


def check_finite_weights(tensors: dict, source: str | os.PathLike) -> None:
    """Raise NonFiniteWeightsError naming the first tensor of `tensors` (a nested dict of arrays, keys joined with
    '/') that holds NaN or Inf, and how many of its values do. One pass over each tensor: cheap next to reading it."""
    stack = [("", tensors)]
    while stack:
        prefix, tree = stack.pop()
        for key in sorted(tree, reverse=True):
            value, name = tree[key], f"{prefix}{key}"
            if isinstance(value, dict):
                stack.append((f"{name}/", value))
                continue
            array = np.asarray(value)
            if array.dtype.kind not in "fc" and "float" not in str(array.dtype):
                continue
            finite = np.isfinite(array.astype(np.float32) if array.dtype.itemsize < 4 else array)
            if not finite.all():
                bad = int(array.size - np.count_nonzero(finite))
                raise NonFiniteWeightsError(
                    f"tensor {name} in {source} holds {bad} NaN/Inf value(s) of {array.size}; the weights are "
                    "damaged (a cut download, a diverged run): re-download or re-export them")


def read_safetensors_shapes(path: pathlib.Path) -> dict[str, tuple[int, ...]]:
    """Tensor shapes of a .safetensors file from its header alone (no tensor data is read)."""
    try:
        with open(path, "rb") as f:
            return {key: tuple(info["shape"]) for key, info in _read_header(f, path).items()}
    except OSError as e:
        raise ReleaseError(f"cannot read safetensors file {path}: {e}") from e


def read_safetensors(path: pathlib.Path) -> dict[str, np.ndarray]:
    """All tensors of a .safetensors file as numpy arrays (fp16/bf16 kept as stored; callers cast).

    Parsed directly (8-byte header size, JSON header, raw little-endian data) so bf16 works without torch.
    """
    try:
        with open(path, "rb") as f:
            header = _read_header(f, path)
            data = f.read()
    except OSError as e:
        raise ReleaseError(f"cannot read safetensors file {path}: {e}; re-download or re-export that file") from e
    tensors = {}
    for key, info in header.items():
        if info["dtype"] not in _SAFETENSORS_DTYPES:
            raise ReleaseError(f"{path}: tensor {key} has unsupported dtype {info['dtype']}")
        begin, end = info["data_offsets"]
        if end > len(data):
            raise ReleaseError(f"{path} is truncated (tensor {key} ends at byte {end}, file has {len(data)}); "
                               "re-download or re-export it")
        dtype = np.dtype(_SAFETENSORS_DTYPES[info["dtype"]]).newbyteorder("<")
        tensors[key] = np.frombuffer(data[begin:end], dtype=dtype).reshape(info["shape"])
    return tensors


def read_safetensors_folder(folder: pathlib.Path, error: type[Exception]) -> dict[str, np.ndarray]:
    """Every tensor of a transformers/diffusers model folder's .safetensors file(s) (sharded saves too), each file
    checked for NaN/Inf; `error` (the caller's one-line error class) when the folder holds none."""
    files = sorted(pathlib.Path(folder).glob("*.safetensors"))
    if not files:
        raise error(f"{folder} holds no .safetensors weights; save the model with "
                    "save_pretrained(safe_serialization=True)")
    tensors: dict[str, np.ndarray] = {}
    for path in files:
        loaded = read_safetensors(path)
        check_finite_weights(loaded, path)
        tensors.update(loaded)
    return tensors


def write_safetensors(path: pathlib.Path, tensors: dict[str, np.ndarray], metadata: dict[str, str] | None = None):
    """Write tensors in the safetensors format (keys sorted, 8-byte aligned header), loadable by torch and diffusers."""
    names = {np.dtype(v): k for k, v in _SAFETENSORS_DTYPES.items()}
    header: dict[str, Any] = {"__metadata__": metadata or {"format": "pt"}}
    offset, blobs = 0, []
    for key in sorted(tensors):
        array = np.asarray(tensors[key])  # not ascontiguousarray: it turns 0-d scalars (logit_scale) into shape [1]
        blob = np.ascontiguousarray(array.astype(array.dtype.newbyteorder("<"), copy=False)).tobytes()
        header[key] = {"dtype": names[array.dtype], "shape": list(array.shape), "data_offsets": [offset, offset + len(blob)]}
        offset += len(blob)
        blobs.append(blob)
    encoded = json.dumps(header, separators=(",", ":")).encode()
    encoded += b" " * (-len(encoded) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(encoded)))
        f.write(encoded)
        for blob in blobs:
            f.write(blob)


@dataclasses.dataclass(frozen=True)
class Release:
    """An official MV-RAG release directory (the layout of tests/reference/tiny_release)."""

    root: pathlib.Path

    @classmethod
    def open(cls, root: str | pathlib.Path) -> "Release":
        root = pathlib.Path(root)
        if not root.exists():
            raise ReleaseError(f"release directory {root} does not exist; pass the folder that holds model_index.json")
        if not root.is_dir():
            raise ReleaseError(f"release path {root} is not a directory; pass the folder that holds model_index.json")
        if not (root / "model_index.json").is_file():
            raise ReleaseError(f"{root} has no model_index.json, so it is not an MV-RAG release folder; "
                               "pass the top folder of the release (with unet/, vae/, text_encoder/, ...)")
        return cls(root)

    def folder(self, component: str) -> pathlib.Path:
        """The release folder of `component` (a key of COMPONENT_FOLDERS or a raw folder name like 'tokenizer')."""
        path = self.root / COMPONENT_FOLDERS.get(component, component)
        if not path.is_dir():
            raise ReleaseError(f"release {self.root} has no {path.relative_to(self.root)}/ folder (needed for "
                               f"{component}); the release is incomplete: copy that folder from the official release")
        return path

    def has(self, component: str) -> bool:
        return (self.root / COMPONENT_FOLDERS.get(component, component)).is_dir()

    def config(self, component: str, filename: str = "config.json") -> dict[str, Any] | None:
        """A component's JSON config, or None when the release does not ship one."""
        path = self.folder(component) / filename
        if not path.is_file():
            return None
        try:
            return json.loads(path.read_text())
        except json.JSONDecodeError as e:
            raise ReleaseError(f"{path} is not valid JSON ({e}); restore it from the official release") from e

    def _weight_files(self, component: str) -> list[pathlib.Path]:
        folder = self.folder(component)
        files = sorted(folder.glob("*.safetensors"))
        if not files:
            raise ReleaseError(f"{folder} holds no .safetensors weights; convert .bin weights to safetensors first "
                               "(e.g. with the official diffusers/transformers save_pretrained(safe_serialization=True))")
        return files

    def weights(self, component: str) -> dict[str, np.ndarray]:
        """The component's tensors from its .safetensors file(s), as stored (dtype cast happens in conversion)."""
        tensors: dict[str, np.ndarray] = {}
        for path in self._weight_files(component):
            loaded = read_safetensors(path)
            check_finite_weights(loaded, path)
            tensors.update(loaded)
        return tensors

    def shapes(self, component: str) -> dict[str, tuple[int, ...]]:
        """The component's tensor shapes, read from the file headers only (cheap even for multi-GB weights)."""
        shapes: dict[str, tuple[int, ...]] = {}
        for path in self._weight_files(component):
            shapes.update(read_safetensors_shapes(path))
        return shapes
