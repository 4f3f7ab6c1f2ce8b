"""Parity and speed of the attention kernels this backend runs, against "xla", at the UNet's own attention shapes.

    mvrag bench all --config configs/mvrag_sd21.py ... --out bench.json      # includes "attention"
    figures = bench_attention(cfg)      # {"cases": [{kernel, case, dtype, max_abs_err, tol, ok, call_s, ...}], "ok"}

Cases (from the model config, so full size gets full-size shapes): the cross-view self-attention of the first UNet
level (one object: num_frames x (image_size/8)^2 tokens, heads x dim_head of that level) and a cross-attention to
text + image tokens. Each kernel runs in float32 and bfloat16; its error against "xla" in the same dtype must stay
within atol + rtol |xla| (float32 1e-4 + 1e-4 |ref|, the parity tolerance; bfloat16 2e-2 + 2e-2 |ref|, bf16's
rounding of the output). Kernels the backend cannot run (cudnn off GPU, pallas_tpu off TPU) are listed as skipped.
"""

import time
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from mvrag_jax.models import attention_kernels as kernels
from mvrag_jax.models.unet import CONTEXT_LENGTH, UNetConfig

TOLERANCE = {"float32": (1e-4, 1e-4), "bfloat16": (2e-2, 2e-2)}  # (atol, rtol)
CANDIDATES = ("chunked", "cudnn", "pallas_tpu")


def _cases(config: UNetConfig, num_image_tokens: int) -> dict[str, tuple[tuple[int, ...], tuple[int, ...]]]:
    """name -> (q shape, k shape), [b, l, heads, dh]: one object's cross-view self-attention at the first level
    (the largest) and its cross-attention to text + image tokens."""
    tokens = config.num_frames * config.image_size ** 2  # image_size is the latent side (256 px -> 32)
    heads = config.model_channels // config.num_head_channels if config.num_head_channels > 0 else config.num_heads
    dh = config.model_channels // heads
    return {"self_attention": ((1, tokens, heads, dh), (1, tokens, heads, dh)),
            "cross_attention": ((config.num_frames, config.image_size ** 2, heads, dh),
                                (config.num_frames, CONTEXT_LENGTH + num_image_tokens, heads, dh))}


def _runs_here(kernel: str) -> bool:
    try:
        kernels.resolve_kernel(kernel, jax.default_backend())
        return True
    except kernels.AttentionKernelError:
        return False


def _timed(fn, *args, calls: int) -> float:
    jax.block_until_ready(fn(*args))
    start = time.perf_counter()
    for _ in range(calls):
        out = fn(*args)
    jax.block_until_ready(out)
    return (time.perf_counter() - start) / calls


def bench_attention(cfg: Any, calls: int = 3, seed: int = 0) -> dict[str, Any]:
    """Every runnable kernel vs "xla" on the config's attention shapes, float32 and bfloat16; a JSON-able dict whose
    "ok" is False when any kernel misses its tolerance."""
    config = UNetConfig.from_config(cfg)
    image_tokens = int(cfg.model.num_retrieved) * int(cfg.model.resampler.num_queries)
    rng = np.random.default_rng(seed)
    rows, skipped = [], [k for k in CANDIDATES if not _runs_here(k)]
    for case, (q_shape, k_shape) in _cases(config, image_tokens).items():
        q32, k32, v32 = (rng.standard_normal(s).astype(np.float32) for s in (q_shape, k_shape, k_shape))
        for dtype in ("float32", "bfloat16"):
            q, k, v = (jnp.asarray(a, dtype) for a in (q32, k32, v32))
            run = {name: jax.jit(lambda q, k, v, name=name: kernels.dot_product_attention(q, k, v, kernel=name))
                   for name in ("xla",) + tuple(c for c in CANDIDATES if c not in skipped)}
            with jax.default_matmul_precision("highest"):
                reference = np.asarray(run["xla"](q, k, v), np.float32)
                xla_s = _timed(run["xla"], q, k, v, calls=calls)
                for name, fn in run.items():
                    if name == "xla":
                        continue
                    if name == "cudnn" and dtype == "float32":
                        continue  # cuDNN flash attention takes bf16/fp16 only
                    out = np.asarray(fn(q, k, v), np.float32)
                    atol, rtol = TOLERANCE[dtype]
                    error = np.abs(out - reference)
                    rows.append({"kernel": name, "case": case, "dtype": dtype, "q_shape": list(q_shape),
                                 "k_shape": list(k_shape), "max_abs_err": float(error.max()),
                                 "worst_err_over_tol": float((error / (atol + rtol * np.abs(reference))).max()),
                                 "ok": bool((error <= atol + rtol * np.abs(reference)).all()),
                                 "call_s": _timed(fn, q, k, v, calls=calls), "xla_call_s": xla_s})
    return {"component": "attention", "backend": jax.default_backend(), "device": jax.devices()[0].device_kind,
            "skipped": skipped, "cases": rows, "ok": all(r["ok"] for r in rows)}
