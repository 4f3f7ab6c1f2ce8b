"""Which parameters train is data: a label tree built from param paths, fed to optax.multi_transform.

MV-RAG fine-tunes only the retrieval branch: the whole resampler and the decoupled image projections `to_k_ip` /
`to_v_ip` of every UNet attn2. Everything else (UNet, VAE, text/image encoders) is frozen and gets
`optax.set_to_zero()`, so frozen weights carry no optimizer state.
"""

from typing import Any

import jax
import optax

TRAIN, FROZEN = "train", "frozen"
TRAINABLE_SUBTREES = ("resampler",)       # every param below a path segment of this name trains
TRAINABLE_MODULES = ("to_k_ip", "to_v_ip")  # every param of a module of this name trains


class NoTrainableParamsError(ValueError):
    """The param tree has nothing to train, so an optimizer over it would silently do nothing."""


def _segment_names(path: tuple[Any, ...]) -> list[str]:
    """The dict keys along a tree path; attribute steps (the `.value` of a logically boxed leaf) are not names."""
    return [str(entry.key) for entry in path if isinstance(entry, jax.tree_util.DictKey)]


def label_for_path(names: list[str]) -> str:
    """TRAIN when a segment is a trainable subtree or module name, else FROZEN."""
    trainable = set(TRAINABLE_SUBTREES) | set(TRAINABLE_MODULES)
    return TRAIN if any(name in trainable for name in names) else FROZEN


def trainable_labels(params: Any) -> Any:
    """Same-structure tree of "train"/"frozen" labels (works on boxed, unboxed and abstract trees)."""
    return jax.tree_util.tree_map_with_path(lambda path, _: label_for_path(_segment_names(path)), params)


def trainable_paths(params: Any) -> list[str]:
    """'/'-joined paths of the trainable leaves, sorted (for logs and tests)."""
    flat = jax.tree_util.tree_flatten_with_path(trainable_labels(params))[0]
    return sorted("/".join(_segment_names(path)) for path, label in flat if label == TRAIN)


def make_optimizer(tx: optax.GradientTransformation, params: Any) -> optax.GradientTransformation:
    """`tx` on the trainable params, `set_to_zero` (no state, no update) on the frozen ones."""
    if not trainable_paths(params):
        raise NoTrainableParamsError(
            "no trainable params: no 'resampler' subtree and no to_k_ip/to_v_ip modules in the tree; pass the "
            "MV-RAG params ({'unet': ..., 'resampler': ...}), not a base MVDream UNet")
    return optax.multi_transform({TRAIN: tx, FROZEN: optax.set_to_zero()}, trainable_labels(params))
