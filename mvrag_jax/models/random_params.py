"""Random weights for any model config, filled on the host (no compile): timings, tests and numerics checks.

    shapes = nn.unbox(jax.eval_shape(unet.init_params, config, jax.random.key(0)))
    params = host_random_params(shapes, seed=0)        # nested dict of float32 numpy arrays, same paths
"""

from typing import Any

import numpy as np
from flax import traverse_util


# Learned tables and tokens: N(0, 0.02) as the transformers initialisers; left at 0 a whole model degenerates
# (zero CLS token -> zero DINOv2 embedding -> NaN cosine similarity -> NaN fusion weight).
_EMBEDDINGS = ("embedding", "class_embedding", "cls_token", "mask_token", "position_embeddings", "latents")
_ONES = ("scale", "lambda1")  # norm scales and DINOv2's layer scale


def host_random_params(shapes: Any, seed: int = 0) -> dict:
    """Fill an abstract param tree on the host: kernels N(0, 1/fan_in), embeddings N(0, 0.02), norm and layer
    scales 1, everything else (biases) 0.

    For timings and numerics checks where the values are incidental: a jitted `init_params` spends most of its
    (CPU) compile time on one truncated-normal sampler per kernel, which would dwarf a small config's benchmark.
    """
    rng = np.random.default_rng(seed)

    def fill(path: tuple[str, ...], shape: tuple[int, ...]) -> np.ndarray:
        if path[-1] == "kernel":
            fan_in = int(np.prod(shape[:-1]))
            return (rng.standard_normal(shape) / np.sqrt(fan_in)).astype(np.float32)
        if path[-1] in _EMBEDDINGS:
            return (0.02 * rng.standard_normal(shape)).astype(np.float32)
        return np.full(shape, 1.0 if path[-1] in _ONES else 0.0, np.float32)

    return traverse_util.unflatten_dict({path: fill(path, leaf.shape)
                                        for path, leaf in traverse_util.flatten_dict(shapes).items()})
