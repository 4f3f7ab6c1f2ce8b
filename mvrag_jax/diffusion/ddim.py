"""DDIM scheduler maths (diffusers DDIMScheduler as the official MV-RAG pipeline configures it), eta = 0.

    schedule = DDIMSchedule.from_release(Release.open(dir))      # scheduler/scheduler_config.json
    table = alphas_cumprod(schedule)                             # [T] float32, computed once on the host
    ts = timesteps(schedule, num_inference_steps)                # [N] int64, e.g. [801, 601, 401, 201, 1]
    x_prev = ddim_step(x, eps, t, t - schedule.step_ratio(N), table, final_alpha(schedule))

Tables are numpy (host, once per schedule); `ddim_step` is pure jnp so it runs inside the jitted sampling loop.
"""

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from mvrag_jax.inputs.release import Release
from mvrag_jax.errors import MvragError

SCHEDULER_CONFIG = "scheduler_config.json"
BETA_SCHEDULES = ("linear", "scaled_linear")
PREDICTION_TYPE = "epsilon"
TIMESTEP_SPACING = "leading"
# DDIMScheduler options we implement only at their default; another value in a scheduler config is an error.
_FIXED_OPTIONS = {"thresholding": False, "rescale_betas_zero_snr": False, "trained_betas": None}


class SchedulerConfigError(MvragError, ValueError):
    """A scheduler config value is not supported or inconsistent."""


@jax.tree_util.register_static  # hashable and leaf-free: can be passed through jit as a static config
@dataclasses.dataclass(frozen=True)
class DDIMSchedule:
    """The DDIMScheduler config fields that change the maths (defaults = diffusers DDIMScheduler defaults)."""
    num_train_timesteps: int = 1000
    beta_start: float = 0.0001
    beta_end: float = 0.02
    beta_schedule: str = "linear"
    set_alpha_to_one: bool = True
    steps_offset: int = 0
    prediction_type: str = "epsilon"
    timestep_spacing: str = "leading"
    clip_sample: bool = False

    def __post_init__(self):
        if self.beta_schedule not in BETA_SCHEDULES:
            raise SchedulerConfigError(f"beta_schedule={self.beta_schedule!r} is not supported; mvrag-jax implements "
                                       f"{BETA_SCHEDULES} (the release uses 'scaled_linear')")
        for name, supported in (("prediction_type", PREDICTION_TYPE), ("timestep_spacing", TIMESTEP_SPACING)):
            if getattr(self, name) != supported:
                raise SchedulerConfigError(f"scheduler {name}={getattr(self, name)!r} is not supported; mvrag-jax "
                                           f"implements only {name}={supported!r} (the MV-RAG release value): "
                                           "fix scheduler/scheduler_config.json")
        if self.clip_sample:
            raise SchedulerConfigError("clip_sample=True is not supported (the official pipeline forces it to False); "
                                       "set clip_sample=False")
        if self.num_train_timesteps < 1:
            raise SchedulerConfigError(f"num_train_timesteps={self.num_train_timesteps}; it must be >= 1")

    @classmethod
    def from_config(cls, values: dict[str, Any], where: str = "scheduler config") -> "DDIMSchedule":
        """From a diffusers scheduler_config.json dict; unknown keys (`_class_name`, `skip_prk_steps`) are ignored
        as diffusers ignores them, and options we do not implement at a non-default value are errors."""
        for name, supported in _FIXED_OPTIONS.items():
            if values.get(name, supported) != supported:
                raise SchedulerConfigError(f"{where} sets {name}={values[name]!r}; mvrag-jax implements only "
                                           f"{name}={supported!r} (the MV-RAG release value)")
        fields = {f.name for f in dataclasses.fields(cls)}
        return cls(**{key: value for key, value in values.items() if key in fields})

    @classmethod
    def from_release(cls, release: "Release") -> "DDIMSchedule":
        """The schedule the official pipeline runs: scheduler/scheduler_config.json, with the two overrides
        MVRAGPipeline.__init__ applies to outdated configs (steps_offset -> 1, clip_sample -> False)."""
        values = release.config("scheduler", SCHEDULER_CONFIG)
        if values is None:
            raise SchedulerConfigError(f"{release.folder('scheduler')} has no {SCHEDULER_CONFIG}; copy it from the "
                                       "official release")
        if values.get("_class_name", "DDIMScheduler") != "DDIMScheduler":
            raise SchedulerConfigError(f"scheduler/{SCHEDULER_CONFIG} is a {values['_class_name']}; mvrag-jax "
                                       "implements only DDIMScheduler (the MV-RAG release scheduler)")
        values = {**values, "steps_offset": 1, "clip_sample": False}
        return cls.from_config(values, where=f"scheduler/{SCHEDULER_CONFIG}")

    def step_ratio(self, num_inference_steps: int) -> int:
        """Train timesteps between two inference steps (prev_t = t - step_ratio)."""
        return self.num_train_timesteps // num_inference_steps


def _torch_linspace_f32(start: float, end: float, steps: int) -> np.ndarray:
    """torch.linspace(start, end, steps, dtype=float32) on CPU, bit for bit: float32 start/end/step, the first half
    counted up from `start`, the second half down from `end`, each as one fused multiply-add (torch's vectorised CPU
    build contracts `start + step * i` into an FMA). An FMA rounds once; float64 holds the float32 product exactly,
    so adding in float64 and rounding to float32 reproduces it (checked against the reference alphas_cumprod)."""
    start32, end32 = np.float32(start), np.float32(end)
    step = np.float64((end32 - start32) / np.float32(max(steps - 1, 1)))
    index = np.arange(steps, dtype=np.float64)
    up = np.float64(start32) + step * index
    down = np.float64(end32) - step * (steps - 1 - index)
    return np.where(index < steps // 2, up, down).astype(np.float32)


def betas(schedule: DDIMSchedule) -> np.ndarray:
    """[T] float32 betas."""
    if schedule.beta_schedule == "linear":
        return _torch_linspace_f32(schedule.beta_start, schedule.beta_end, schedule.num_train_timesteps)
    # scaled_linear: linspace of square roots, then squared (in float32, as diffusers does)
    root = _torch_linspace_f32(schedule.beta_start ** 0.5, schedule.beta_end ** 0.5, schedule.num_train_timesteps)
    return root * root


def alphas_cumprod(schedule: DDIMSchedule) -> np.ndarray:
    """[T] float32 cumulative products of (1 - beta). torch's CPU cumprod accumulates float32 in float64 and rounds
    each partial product to float32, so we do the same."""
    alphas = (np.float32(1.0) - betas(schedule)).astype(np.float64)
    return np.cumprod(alphas).astype(np.float32)


def final_alpha(schedule: DDIMSchedule) -> np.float32:
    """alpha_cumprod used for the step past t = 0: 1 when set_alpha_to_one, else alphas_cumprod[0]."""
    return np.float32(1.0) if schedule.set_alpha_to_one else alphas_cumprod(schedule)[0]


def timesteps(schedule: DDIMSchedule, num_inference_steps: int) -> np.ndarray:
    """[N] int64 inference timesteps, largest first ('leading' spacing: arange(N) * (T // N), reversed, + offset)."""
    if not 1 <= num_inference_steps <= schedule.num_train_timesteps:
        raise SchedulerConfigError(f"num_inference_steps={num_inference_steps}; it must be in [1, "
                                   f"{schedule.num_train_timesteps}] (the scheduler's num_train_timesteps)")
    ts = np.arange(num_inference_steps, dtype=np.int64) * schedule.step_ratio(num_inference_steps)
    return ts[::-1].copy() + schedule.steps_offset


def previous_timesteps(schedule: DDIMSchedule, num_inference_steps: int) -> np.ndarray:
    """[N] int64 timestep each step moves to (negative past the start: that step uses final_alpha)."""
    return timesteps(schedule, num_inference_steps) - schedule.step_ratio(num_inference_steps)


def ddim_step(x: jax.Array, eps: jax.Array, t: jax.Array, t_prev: jax.Array, alphas_cumprod_table: jax.Array,
              final_alpha_cumprod: jax.Array) -> jax.Array:
    """One deterministic DDIM step (eta = 0, epsilon prediction) from x_t to x_{t_prev}, in float32.

    x0 = (x - sqrt(1 - a_t) eps) / sqrt(a_t);  x_prev = sqrt(a_prev) x0 + sqrt(1 - a_prev) eps,
    a_prev = alphas_cumprod[t_prev] when t_prev >= 0, else final_alpha_cumprod. t, t_prev: integer scalars.
    """
    table = jnp.asarray(alphas_cumprod_table, jnp.float32)
    alpha_t = table[t]
    # Clamp the index so the gather stays in range; the where picks final_alpha for t_prev < 0.
    alpha_prev = jnp.where(t_prev >= 0, table[jnp.maximum(t_prev, 0)], jnp.asarray(final_alpha_cumprod, jnp.float32))
    x, eps = x.astype(jnp.float32), eps.astype(jnp.float32)
    x0 = (x - jnp.sqrt(1.0 - alpha_t) * eps) / jnp.sqrt(alpha_t)
    return jnp.sqrt(alpha_prev) * x0 + jnp.sqrt(1.0 - alpha_prev) * eps
