"""The optimizer of the trainable params: global-norm clipping, then AdamW on a warmup + constant/cosine schedule.

    tx, schedule = make_tx(cfg.train.optimizer, cfg.train.steps)
    schedule(applied_updates)  # the learning rate optax uses at that update count

The optimizer only ever sees the trainable subtree (train/state.py splits the params), so frozen weights carry no
optimizer state and get no gradient computed at all.
"""

from typing import Any, Callable

import optax

from mvrag_jax.errors import MvragError

SCHEDULES = ("constant", "cosine")


class OptimizerConfigError(MvragError, ValueError):
    """An optimizer setting is out of range or unknown."""


def make_schedule(opt: Any, total_steps: int) -> Callable[[Any], Any]:
    """Linear warmup from 0 to learning_rate over warmup_steps, then constant or cosine down to end_factor * lr."""
    if opt.schedule not in SCHEDULES:
        raise OptimizerConfigError(f"--config.train.optimizer.schedule={opt.schedule!r}; choose one of {SCHEDULES}")
    if opt.learning_rate <= 0 or opt.warmup_steps < 0:
        raise OptimizerConfigError(f"learning_rate={opt.learning_rate} must be > 0 and warmup_steps="
                                   f"{opt.warmup_steps} >= 0; fix --config.train.optimizer")
    lr, warmup = float(opt.learning_rate), int(opt.warmup_steps)
    if opt.schedule == "constant":
        if warmup == 0:
            return optax.constant_schedule(lr)
        return optax.join_schedules([optax.linear_schedule(0.0, lr, warmup), optax.constant_schedule(lr)], [warmup])
    if total_steps <= warmup:
        raise OptimizerConfigError(f"cosine schedule needs train.steps={total_steps} > warmup_steps={warmup}")
    return optax.warmup_cosine_decay_schedule(0.0, lr, warmup, total_steps, end_value=lr * float(opt.end_factor))


def make_tx(opt: Any, total_steps: int) -> tuple[optax.GradientTransformation, Callable[[Any], Any]]:
    """(tx, schedule) from cfg.train.optimizer; tx = clip_by_global_norm (if > 0) -> adamw(schedule)."""
    schedule = make_schedule(opt, total_steps)
    adamw = optax.adamw(schedule, b1=float(opt.b1), b2=float(opt.b2), eps=float(opt.eps),
                        weight_decay=float(opt.weight_decay))
    clip = float(opt.grad_clip_norm)
    return (optax.chain(optax.clip_by_global_norm(clip), adamw) if clip > 0 else adamw), schedule
