"""`mvrag bench reconstruct`: seconds per object of LGM (4 views -> 3D Gaussians) and of its 18 re-renders.

    mvrag bench reconstruct                                  # the released "big" network, random weights
    mvrag bench reconstruct --lgm model_fp16_fixrot.safetensors --render_size 512

Without --lgm the network is the released "big" config (415M parameters, 65,536 Gaussians) with random weights:
the network's time does not depend on its weights, but the renderer's does a little (tiles a Gaussian covers follow
its learned scale), so a figure from the released weights is the one to quote for rendering. The first call
compiles (reported apart); the next `steps` calls are timed with the device blocked (recon/reconstruct.py).
"""

import os
import statistics
import time
from typing import Any

import jax
import numpy as np
from flax.core import meta

from mvrag_jax.models import lgm
from mvrag_jax.recon import reconstruct


def random_lgm(config: lgm.LGMConfig, seed: int = 0) -> Any:
    """Random params of `config`, initialised in one compiled call (415M of them take ~20 s on 2 CPU cores)."""
    return meta.unbox(jax.jit(lambda rng: lgm.init_params(config, rng))(jax.random.key(seed)))


def bench_reconstruct(config: lgm.LGMConfig, params: Any, *, steps: int = 2, render_size: int = 256,
                      num_renders: int = 18, weights: str = "random") -> dict[str, Any]:
    settings = reconstruct.ReconstructSettings(num_renders=num_renders, render_size=render_size).check()
    views = np.random.default_rng(0).integers(0, 256, (1, 4, config.input_size, config.input_size, 3), np.uint8)
    params = reconstruct.place_params(params)
    calls = []
    for _ in range(1 + steps):
        began = time.perf_counter()
        _, renders, seconds = reconstruct.reconstruct_batch(config, params, views, [15.0], settings)
        calls.append({"wall_s": time.perf_counter() - began, **seconds})
    timed = calls[1:]
    median = lambda key: statistics.median(c[key] for c in timed) if timed else None
    return {"weights": weights, "parameters": int(sum(x.size for x in jax.tree_util.tree_leaves(params))),
            "gaussians": config.num_gaussians, "input_size": config.input_size, "render_size": render_size,
            "renders": int(renders.shape[1]), "first_call_s": calls[0]["wall_s"], "first_call": calls[0],
            "steps": steps, "object_s": median("wall_s"), "lgm_s": median("lgm"), "render_s": median("render"),
            "device": jax.devices()[0].device_kind, "cpu_count": os.cpu_count()}
