"""Benchmarks: compile time (lower and compile timed apart) and per-call time of the multiview UNet.

    mvrag bench unet --config configs/tiny.py
    mvrag bench unet --config configs/tiny.py:size=medium --config.runtime.dtype=bfloat16

`bench_unet(cfg)` returns a JSON-able dict. The forward+backward step differentiates only the trainable subset
(train/trainable.py: to_k_ip/to_v_ip of the UNet), with image tokens present, as MV-RAG fine-tuning does.
"""

import time
from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from mvrag_jax.bench.memory import compiled_memory
from mvrag_jax.models.random_params import host_random_params
from mvrag_jax.models.unet import CONTEXT_LENGTH, MultiViewUNet, UNetConfig, init_params
from mvrag_jax.train.trainable import merge_params, split_trainable
from mvrag_jax.errors import UsageError

TIMESTEPS = 1000  # DDPM training steps: the range timesteps are drawn from


def _unet_inputs(config: UNetConfig, batch_size: int, num_image_tokens: int, seed: int) -> dict[str, Any]:
    """Random host inputs for `batch_size` objects x num_frames views (rows [b * views]); x NHWC."""
    rows = batch_size * config.num_frames
    rng = np.random.default_rng(seed)
    normal = lambda *shape: rng.standard_normal(shape).astype(np.float32)
    return {
        "x": normal(rows, config.image_size, config.image_size, config.in_channels),
        "timesteps": rng.integers(0, TIMESTEPS, rows).astype(np.float32),
        "context": normal(rows, CONTEXT_LENGTH, config.context_dim),
        "camera": None if config.camera_dim is None else normal(rows, config.camera_dim),
        "image_tokens": normal(rows, num_image_tokens, config.context_dim),
        "scale": np.float32(0.7),
    }


def _count(tree: Any) -> int:
    return int(sum(x.size for x in jax.tree.leaves(tree)))


def _time_compiled(fn: Callable, args: tuple, steps: int) -> dict[str, Any]:
    """Lower, compile (each timed), one warm-up call, then `steps` timed calls (block_until_ready each)."""
    start = time.perf_counter()
    lowered = jax.jit(fn).lower(*args)
    lowered_at = time.perf_counter()
    compiled = lowered.compile()
    compiled_at = time.perf_counter()
    jax.block_until_ready(compiled(*args))  # first call pays one-off allocation/transfer costs
    times = []
    for _ in range(steps):
        begin = time.perf_counter()
        jax.block_until_ready(compiled(*args))  # the compiled object cannot retrace: static shapes, one compile
        times.append(time.perf_counter() - begin)
    return {"lower_s": lowered_at - start, "compile_s": compiled_at - lowered_at,
            "step_s": sum(times) / len(times), "step_min_s": min(times), "memory": compiled_memory(compiled)}


def bench_unet(cfg: Any, batch_size: int = 1, steps: int = 5, seed: int = 0) -> dict[str, Any]:
    """Forward and forward+backward timings of the UNet of experiment config `cfg` (configs/*.py).

    `batch_size` counts objects (each num_frames views). Uses cfg.runtime dtype/remat/matmul_precision.
    """
    if batch_size < 1 or steps < 1:
        raise UsageError(f"bench_unet needs batch_size >= 1 and steps >= 1, got batch_size={batch_size} "
                         f"steps={steps}")
    config = UNetConfig.from_config(cfg)
    num_image_tokens = cfg.model.num_retrieved * cfg.model.resampler.num_queries
    model = MultiViewUNet(config)
    with jax.default_matmul_precision(cfg.runtime.matmul_precision):
        shapes = nn.unbox(jax.eval_shape(init_params, config, jax.random.key(0)))
        params = jax.device_put(host_random_params(shapes, seed))
        inputs = jax.device_put(_unet_inputs(config, batch_size, num_image_tokens, seed + 1))
        trainable, frozen = split_trainable(params)

        def forward(params, inputs):
            return model.apply({"params": params}, **inputs)

        def loss(trainable, frozen, inputs):
            eps = model.apply({"params": merge_params(trainable, frozen)}, **inputs)
            return jnp.mean(jnp.square(eps.astype(jnp.float32)))

        forward_stats = _time_compiled(forward, (params, inputs), steps)
        backward_stats = _time_compiled(jax.value_and_grad(loss), (trainable, frozen, inputs), steps)
    device = jax.devices()[0]
    return {
        "component": "unet",
        "backend": jax.default_backend(),
        "device": device.device_kind,
        "dtype": config.dtype,
        "remat": config.remat,
        "matmul_precision": cfg.runtime.matmul_precision,
        "batch_size": batch_size,
        "num_frames": config.num_frames,
        "image_size": config.image_size,
        "num_image_tokens": num_image_tokens,
        "param_count": _count(params),
        "trainable_param_count": _count(trainable),
        "steps": steps,
        "forward": forward_stats,
        "forward_backward": backward_stats,
    }
