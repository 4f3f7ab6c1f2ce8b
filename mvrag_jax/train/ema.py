"""Exponential moving average (EMA) of the trainable weights, updated inside the jitted step after the optimizer.

    decay = ema_decay_of(cfg)                               # cfg.train.ema_decay; 0 = no EMA
    ema = update(state.ema, new_trainable, updates, decay)  # in train/step.py, after optax.apply_updates

Per update n (0-based count of the updates applied before this one; skipped non-finite steps do not count):
    ema <- d_n * ema + (1 - d_n) * params,   d_n = 0 for n = 0, else min(decay, (1 + n) / (10 + n))
the warm-up of diffusers' EMAModel.get_decay (update_after_step=0, use_ema_warmup=False): the first update copies
the weights, so the EMA never averages in the initial ones, and early on the average spans about n / 9 updates
instead of 1 / (1 - decay), which would be mostly the start of the run. The EMA lives in the TrainState beside the
weights it follows (same tree, same shardings, float32), so checkpoints, resumes and mesh changes carry it as they
carry the weights.
"""

from typing import Any

import jax
import jax.numpy as jnp

from mvrag_jax.errors import MvragError


class EMAConfigError(MvragError, ValueError):
    """cfg.train.ema_decay is not a decay (0 <= decay < 1)."""


def ema_decay_of(cfg: Any) -> float:
    """cfg.train.ema_decay (0: off; also for configs without it or a train block), checked."""
    decay = float(cfg.get("train", {}).get("ema_decay", 0.0))
    if not 0.0 <= decay < 1.0:
        raise EMAConfigError(f"train.ema_decay={decay} is not in [0, 1); set --config.train.ema_decay to 0 (no EMA) "
                             "or a decay such as 0.999")
    return decay


def decay_at(updates: jax.Array, decay: float) -> jax.Array:
    """d_n (float32 scalar) for `updates` = n updates applied before this one (see the module docstring)."""
    n = jnp.asarray(updates, jnp.float32)
    return jnp.where(n > 0, jnp.minimum(jnp.float32(decay), (1.0 + n) / (10.0 + n)), 0.0)


def update(ema: dict, params: dict, updates: jax.Array, decay: float) -> dict:
    """The EMA after one more update: d_n * ema + (1 - d_n) * params, leaf by leaf (float32)."""
    d = decay_at(updates, decay)
    return jax.tree.map(lambda e, p: d * e + (1.0 - d) * p.astype(e.dtype), ema, params)
