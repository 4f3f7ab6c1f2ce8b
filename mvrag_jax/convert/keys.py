"""The one rename table between official PyTorch keys and our Flax param paths, used by convert AND export.

Our modules mirror the release's key segments, so the table is mechanical:
  * numeric segments join the name before them: `input_blocks.1.1.norm.weight` -> `input_blocks_1_1/norm/...`;
  * a `weight` leaf becomes `kernel` (Linear: [out, in] -> [in, out]; Conv: OIHW -> HWIO), `scale` (norms) or
    `embedding` (embedding tables), whichever the target module declares; `bias` and named parameters
    (`latents`, `class_embedding`, `lambda1`, ...) keep their names and layout.
"""

import re
from typing import Any, Mapping

import numpy as np

from mvrag_jax.errors import MvragError

_WEIGHT_LEAVES = ("kernel", "scale", "embedding")
_INDEXED = re.compile(r"^(.*?)((?:_\d+)+)$")


class CheckpointKeyError(MvragError, KeyError):
    """Converted keys do not match what the model expects (missing, unexpected or wrong-shape tensors)."""

    def __str__(self) -> str:  # KeyError would repr() the message
        return str(self.args[0])


def torch_key_to_module_path(key: str) -> tuple[tuple[str, ...], str]:
    """`a.0.b.weight` -> ((`a_0`, `b`), `weight`): the Flax module path and the torch leaf name."""
    segments: list[str] = []
    for part in key.split("."):
        if part.isdigit() and segments:
            segments[-1] += f"_{part}"
        else:
            segments.append(part)
    return tuple(segments[:-1]), segments[-1]


def flax_path_to_torch_key(path: tuple[str, ...]) -> str:
    """Inverse of the table: (`a_0`, `b`, `kernel`) -> `a.0.b.weight`."""
    parts = []
    for segment in path[:-1]:
        match = _INDEXED.match(segment)
        parts.append(match.group(1) + match.group(2).replace("_", ".") if match else segment)
    leaf = path[-1]
    parts.append("weight" if leaf in _WEIGHT_LEAVES else leaf)
    return ".".join(parts)


def torch_to_flax_array(leaf: str, array: np.ndarray) -> np.ndarray:
    """Layout transform for the Flax leaf `leaf` (kernel transposes; everything else is unchanged)."""
    if leaf == "kernel" and array.ndim == 4:
        return np.transpose(array, (2, 3, 1, 0))  # OIHW -> HWIO
    if leaf == "kernel" and array.ndim == 2:
        return array.T
    return array


def flax_to_torch_array(leaf: str, array: np.ndarray) -> np.ndarray:
    """Inverse of `torch_to_flax_array`."""
    if leaf == "kernel" and array.ndim == 4:
        return np.transpose(array, (3, 2, 0, 1))  # HWIO -> OIHW
    if leaf == "kernel" and array.ndim == 2:
        return array.T
    return array


def flatten(tree: Mapping[str, Any], prefix: tuple[str, ...] = ()) -> dict[tuple[str, ...], Any]:
    """Nested dict -> {path tuple: leaf}."""
    flat = {}
    for name, value in tree.items():
        if isinstance(value, Mapping):
            flat.update(flatten(value, prefix + (name,)))
        else:
            flat[prefix + (name,)] = value
    return flat


def unflatten(flat: Mapping[tuple[str, ...], Any]) -> dict[str, Any]:
    """{path tuple: leaf} -> nested dict."""
    tree: dict[str, Any] = {}
    for path, value in flat.items():
        node = tree
        for name in path[:-1]:
            node = node.setdefault(name, {})
        node[path[-1]] = value
    return tree


def listing(items: list[str], limit: int = 10) -> str:
    shown = ", ".join(items[:limit])
    return shown + (f" ... (+{len(items) - limit} more)" if len(items) > limit else "")


def state_dict_to_params(state_dict: Mapping[str, np.ndarray], abstract_params: Mapping[str, Any], *,
                         component: str, hint: str = "") -> dict[str, Any]:
    """Map a torch state dict onto the param tree `abstract_params` (e.g. from `jax.eval_shape(model.init, ...)`).

    Arrays are cast to float32. Raises `CheckpointKeyError` listing missing, unexpected and wrong-shape keys (first 10
    of each, then a count) plus `hint`, the likely cause for this component.
    """
    expected = flatten(abstract_params)
    modules: dict[tuple[str, ...], set[str]] = {}
    for path in expected:
        modules.setdefault(path[:-1], set()).add(path[-1])
    params, unexpected, wrong_shape = {}, [], []
    for key, array in state_dict.items():
        module, leaf = torch_key_to_module_path(key)
        if leaf == "weight":
            leaf = next((name for name in _WEIGHT_LEAVES if name in modules.get(module, ())), "weight")
        path = module + (leaf,)
        if path not in expected:
            unexpected.append(key)
            continue
        value = torch_to_flax_array(leaf, np.asarray(array, dtype=np.float32))
        if tuple(value.shape) != tuple(expected[path].shape):
            wrong_shape.append(f"{key} {tuple(np.shape(array))} (model expects {_torch_shape(leaf, expected[path].shape)})")
            continue
        params[path] = value
    misshapen = {entry.split(" ", 1)[0] for entry in wrong_shape}
    missing = [key for key in map(flax_path_to_torch_key, (p for p in expected if p not in params))
               if key not in misshapen]
    if missing or unexpected or wrong_shape:
        lines = [f"{component}: checkpoint keys do not match the model built from the release config."]
        if missing:
            lines.append(f"  missing ({len(missing)}): {listing(sorted(missing))}")
        if unexpected:
            lines.append(f"  unexpected ({len(unexpected)}): {listing(sorted(unexpected))}")
        if wrong_shape:
            lines.append(f"  wrong shape ({len(wrong_shape)}): {listing(wrong_shape)}")
        if hint:
            lines.append(f"  hint: {hint}")
        raise CheckpointKeyError("\n".join(lines))
    return unflatten(params)


def _torch_shape(leaf: str, flax_shape: tuple[int, ...]) -> tuple[int, ...]:
    """The torch shape of a Flax leaf shape (no allocation)."""
    if leaf == "kernel" and len(flax_shape) == 4:
        return (flax_shape[3], flax_shape[2], flax_shape[0], flax_shape[1])
    if leaf == "kernel" and len(flax_shape) == 2:
        return tuple(reversed(flax_shape))
    return tuple(flax_shape)


def params_to_state_dict(params: Mapping[str, Any]) -> dict[str, np.ndarray]:
    """Flax param tree -> torch state dict (official key names and layouts)."""
    return {flax_path_to_torch_key(path): np.ascontiguousarray(flax_to_torch_array(path[-1], np.asarray(value)))
            for path, value in flatten(params).items()}
