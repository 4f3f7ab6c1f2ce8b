"""Which parameters train is data: a label tree built from param paths, fed to optax.multi_transform.

MV-RAG fine-tunes only the retrieval branch: the whole resampler and the decoupled image projections `to_k_ip` /
`to_v_ip` of every UNet attn2 (trainable set "ip"). Everything else (UNet, VAE, text/image encoders) is frozen and
gets `optax.set_to_zero()`, so frozen weights carry no optimizer state. Set "unet" also trains the whole UNet
(MVDream-style base training, what a from-scratch tiny demo needs).
"""

from typing import Any

import jax
import optax

from mvrag_jax.errors import MvragError

TRAIN, FROZEN = "train", "frozen"
# Per trainable set: every param below a path segment of one of these names trains.
TRAINABLE_SETS = {
    "ip": ("resampler", "to_k_ip", "to_v_ip"),  # the paper: resampler + decoupled image projections
    "unet": ("resampler", "unet"),              # the whole UNet (its to_k_ip/to_v_ip included) + resampler
}


class NoTrainableParamsError(MvragError, ValueError):
    """The param tree has nothing to train, so an optimizer over it would silently do nothing."""


def _segment_names(path: tuple[Any, ...]) -> list[str]:
    """The dict keys along a tree path; attribute steps (the `.value` of a logically boxed leaf) are not names."""
    return [str(entry.key) for entry in path if isinstance(entry, jax.tree_util.DictKey)]


class TrainableSetError(MvragError, ValueError):
    """An unknown trainable set name."""


def _names_of(trainable: str) -> set[str]:
    if trainable not in TRAINABLE_SETS:
        raise TrainableSetError(f"trainable={trainable!r}; choose one of {sorted(TRAINABLE_SETS)} "
                                "(e.g. --config.train.trainable=ip)")
    return set(TRAINABLE_SETS[trainable])


def label_for_path(names: list[str], trainable: str = "ip") -> str:
    """TRAIN when a segment is a name of the trainable set, else FROZEN."""
    return TRAIN if _names_of(trainable).intersection(names) else FROZEN


def trainable_labels(params: Any, trainable: str = "ip") -> Any:
    """Same-structure tree of "train"/"frozen" labels (works on boxed, unboxed and abstract trees)."""
    _names_of(trainable)
    return jax.tree_util.tree_map_with_path(lambda path, _: label_for_path(_segment_names(path), trainable), params)


def trainable_paths(params: Any, trainable: str = "ip") -> list[str]:
    """'/'-joined paths of the trainable leaves, sorted (for logs and tests)."""
    flat = jax.tree_util.tree_flatten_with_path(trainable_labels(params, trainable))[0]
    return sorted("/".join(_segment_names(path)) for path, label in flat if label == TRAIN)


def split_trainable(params: dict, trainable: str = "ip") -> tuple[dict, dict]:
    """(trainable, frozen) halves of a nested param dict; each keeps only its own leaves (no empty dicts)."""
    def part(tree: Any, path: tuple[str, ...], want: str) -> Any:
        if not isinstance(tree, dict):
            return tree if label_for_path(list(path), trainable) == want else None
        kept = {k: part(v, path + (k,), want) for k, v in tree.items()}
        return {k: v for k, v in kept.items() if v is not None} or None  # a subtree with no leaves of `want` goes
    return part(params, (), TRAIN) or {}, part(params, (), FROZEN) or {}


def merge_params(trainable: dict, frozen: dict) -> dict:
    """The inverse of `split_trainable`: one nested dict with the leaves of both."""
    if not isinstance(trainable, dict) or not isinstance(frozen, dict):
        raise ValueError("a param path is both trainable and frozen; split the params with split_trainable")
    merged = dict(frozen)
    for key, value in trainable.items():
        merged[key] = merge_params(value, frozen[key]) if key in frozen else value
    return merged


def make_optimizer(tx: optax.GradientTransformation, params: Any, trainable: str = "ip"
                   ) -> optax.GradientTransformation:
    """`tx` on the trainable params, `set_to_zero` (no state, no update) on the frozen ones."""
    if not trainable_paths(params, trainable):
        raise NoTrainableParamsError(
            "no trainable params: no 'resampler' subtree and no to_k_ip/to_v_ip modules in the tree; pass the "
            "MV-RAG params ({'unet': ..., 'resampler': ...}), not a base MVDream UNet")
    return optax.multi_transform({TRAIN: tx, FROZEN: optax.set_to_zero()}, trainable_labels(params, trainable))
