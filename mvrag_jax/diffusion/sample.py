"""The DDIM + classifier-free-guidance sampling loop (official MVRAGPipeline._sample) as one jitted `lax.scan`.

    final = sample(unet_config, unet_params, schedule, latents, prompt_embeds, camera, image_tokens, scale,
                   guidance_scale=5.0, num_inference_steps=50)               # one object, the official layout
    final = sample_batch(unet_config, unet_params, schedule, latents, ...)   # a batch of objects

Scheduler tables (timesteps, previous timesteps, alphas_cumprod, final alpha) are computed once on the host and enter
the compiled loop as arrays, so calls with the same shapes, step count and config reuse one compilation whatever the
latents, prompts, scale or guidance values. The loop runs a batch of objects: the UNet sees rows [object, half, view]
(half 0 = uncond, 1 = cond), so each object's CFG halves sit together (one object: [uncond views..., cond views...],
the official order) and sharding the rows over devices keeps every object on one device.
"""

from typing import Any, NamedTuple

import einops
import jax
import jax.numpy as jnp
import numpy as np

from mvrag_jax.diffusion import ddim
from mvrag_jax.models.unet import MultiViewUNet, UNetConfig
from mvrag_jax.errors import MvragError


class Trajectory(NamedTuple):
    """Per-step values of one sampling run, stacked over steps (NHWC), for a batch of b objects."""
    unet_eps: jax.Array        # [steps, b, 2 * views, h, w, c] raw UNet output, rows [uncond views..., cond views...]
    noise_pred_cfg: jax.Array  # [steps, b, views, h, w, c] uncond + g * (cond - uncond)
    latents: jax.Array         # [steps, b, views, h, w, c] latents after each DDIM step


class SampleInputError(MvragError, ValueError):
    """Sampling inputs have inconsistent shapes."""


def _guided_step(config: UNetConfig, params: Any, x: jax.Array, t: jax.Array, t_prev: jax.Array,
                 context: jax.Array, camera: jax.Array | None, image_tokens: jax.Array | None, scale: jax.Array,
                 guidance_scale: jax.Array, alphas_cumprod: jax.Array,
                 final_alpha: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
    """One CFG step from x_t [b, views, h, w, c]: (unet eps [b, 2 * views, ...], guided noise, x_{t_prev})."""
    b, views = x.shape[:2]
    # [b * 2 * views, h, w, c]: the uncond and cond halves of each object see the same latents
    x_in = einops.repeat(x, "b f h w c -> (b g f) h w c", g=2)
    t_in = jnp.full((x_in.shape[0],), t, jnp.float32)  # the official pipeline feeds timesteps as float
    eps = MultiViewUNet(config).apply({"params": params}, x_in, t_in, context, camera, image_tokens, scale)
    eps = eps.astype(jnp.float32).reshape(b, 2, views, *eps.shape[1:])  # [b, 2, views, h, w, c]
    eps_uncond, eps_cond = eps[:, 0], eps[:, 1]
    noise = eps_uncond + guidance_scale * (eps_cond - eps_uncond)
    return eps.reshape(b, 2 * views, *eps.shape[3:]), noise, ddim.ddim_step(x, noise, t, t_prev, alphas_cumprod,
                                                                            final_alpha)


def sample_loop(config: UNetConfig, params: Any, alphas_cumprod: jax.Array, final_alpha: jax.Array,
                timesteps: jax.Array, previous_timesteps: jax.Array, latents: jax.Array, prompt_embeds: jax.Array,
                camera: jax.Array | None, image_tokens: jax.Array | None, scale: jax.Array,
                guidance_scale: jax.Array, return_trajectory: bool = False) -> tuple[jax.Array, Trajectory | None]:
    """The pure loop (trace it inside a bigger program or jit it via `sample_jitted`).

    latents [b, views, h, w, c]; prompt_embeds [b, 2, L, ctx] = [uncond, cond] per object; camera [b, views, dim]
    or None; image_tokens [b, 2, n, ctx] (uncond, cond tokens of each object, shared by its views) or None;
    scale [b] per-object fusion weight (ignored without image tokens); guidance_scale scalar.
    """
    views = config.num_frames
    context = einops.repeat(prompt_embeds, "b g l c -> (b g f) l c", f=views)  # [b * 2 * views, L, ctx]
    if camera is not None:
        camera = einops.repeat(camera, "b f d -> (b g f) d", g=2)  # [b * 2 * views, camera_dim]
    if image_tokens is not None:
        image_tokens = einops.repeat(image_tokens, "b g n c -> (b g f) n c", f=views)  # [b * 2 * views, n, ctx]
    row_scale = einops.repeat(jnp.asarray(scale, jnp.float32), "b -> (b g f)", g=2, f=views)  # [b * 2 * views]

    def step(x, t_pair):
        t, t_prev = t_pair
        eps, noise, x_prev = _guided_step(config, params, x, t, t_prev, context, camera, image_tokens, row_scale,
                                          guidance_scale, alphas_cumprod, final_alpha)
        return x_prev, Trajectory(eps, noise, x_prev) if return_trajectory else None

    final, trajectory = jax.lax.scan(step, latents.astype(jnp.float32), (timesteps, previous_timesteps))
    return final, trajectory


# config (a static pytree) and return_trajectory select the compilation; everything else is traced.
sample_jitted = jax.jit(sample_loop, static_argnames=("return_trajectory",))


def schedule_tables(schedule: ddim.DDIMSchedule, num_inference_steps: int) -> tuple[np.ndarray, ...]:
    """Host tables the loop takes: (alphas_cumprod [T], final_alpha, timesteps [N] int32, previous [N] int32)."""
    # int32 timesteps index the alphas table inside the loop.
    return (ddim.alphas_cumprod(schedule), ddim.final_alpha(schedule),
            ddim.timesteps(schedule, num_inference_steps).astype(np.int32),
            ddim.previous_timesteps(schedule, num_inference_steps).astype(np.int32))


def check_batch_inputs(config: UNetConfig, latents, prompt_embeds, camera, image_tokens, scale) -> None:
    """Shape checks of `sample_loop`'s batched inputs, with the expected layout in the message."""
    views = config.num_frames
    if latents.ndim != 5 or latents.shape[1] != views or latents.shape[-1] != config.in_channels:
        raise SampleInputError(f"latents have shape {tuple(latents.shape)}; expected [objects, views={views}, h, w, "
                               f"{config.in_channels}] (NHWC; set num_frames on the UNet config)")
    b = latents.shape[0]
    if prompt_embeds.ndim != 4 or tuple(prompt_embeds.shape[:2]) != (b, 2):
        raise SampleInputError(f"prompt_embeds have shape {tuple(prompt_embeds.shape)}; expected [objects={b}, 2, L, "
                               "ctx] = [uncond, cond] per object for classifier-free guidance")
    if camera is not None and tuple(camera.shape[:2]) != (b, views):
        raise SampleInputError(f"camera has shape {tuple(camera.shape)}; expected [objects={b}, views={views}, dim]")
    if image_tokens is not None and (image_tokens.ndim != 4 or tuple(image_tokens.shape[:2]) != (b, 2)):
        raise SampleInputError(f"image_tokens have shape {tuple(image_tokens.shape)}; expected [objects={b}, 2, "
                               "tokens, ctx] ([uncond, cond] per object) or None")
    if tuple(np.shape(scale)) != (b,):
        raise SampleInputError(f"scale has shape {tuple(np.shape(scale))}; expected [objects={b}]")


def sample_batch(unet_config: UNetConfig, unet_params: Any, schedule: ddim.DDIMSchedule, latents, prompt_embeds,
                 camera, image_tokens, scale, guidance_scale: float, num_inference_steps: int,
                 return_trajectory: bool = False) -> jax.Array | tuple[jax.Array, Trajectory]:
    """DDIM (eta 0) with CFG for a batch of objects; inputs as `sample_loop` (camera may also be [views, dim], shared
    by every object; scale a scalar, shared). Returns final latents [b, views, h, w, c] (and the Trajectory)."""
    latents, prompt_embeds = jnp.asarray(latents), jnp.asarray(prompt_embeds)
    b = latents.shape[0] if latents.ndim == 5 else None
    if camera is not None:
        camera = jnp.asarray(camera, jnp.float32)
        if camera.ndim == 2 and b is not None:
            camera = jnp.broadcast_to(camera, (b, *camera.shape))
    image_tokens = None if image_tokens is None else jnp.asarray(image_tokens)
    scale = jnp.broadcast_to(jnp.asarray(scale, jnp.float32), (b,)) if np.ndim(scale) == 0 and b else scale
    check_batch_inputs(unet_config, latents, prompt_embeds, camera, image_tokens, scale)
    final, trajectory = sample_jitted(unet_config, unet_params, *schedule_tables(schedule, num_inference_steps),
                                      latents, prompt_embeds, camera, image_tokens, jnp.asarray(scale, jnp.float32),
                                      jnp.float32(guidance_scale), return_trajectory=return_trajectory)
    return (final, trajectory) if return_trajectory else final


def sample(unet_config: UNetConfig, unet_params: Any, schedule: ddim.DDIMSchedule, latents, prompt_embeds, camera,
           image_tokens, scale: float, guidance_scale: float, num_inference_steps: int,
           return_trajectory: bool = False) -> jax.Array | tuple[jax.Array, Trajectory]:
    """One object in the official layout: latents [views, h, w, c] (NHWC) -> final latents [views, h, w, c].

    prompt_embeds [2, L, ctx] = [uncond, cond]; camera [views, camera_dim] or None; image_tokens [2 * views, n, ctx]
    (rows [uncond x views, cond x views], each half one token set repeated per view, as the official pipeline builds
    them) or None (prior pass: text-only cross-attention); scale: the image-attention fusion scale.
    With return_trajectory, also returns the per-step Trajectory with the object axis dropped.
    """
    views = unet_config.num_frames
    latents, prompt_embeds = np.asarray(latents), np.asarray(prompt_embeds)
    if latents.ndim != 4 or latents.shape[0] != views or latents.shape[-1] != unet_config.in_channels:
        raise SampleInputError(f"latents have shape {tuple(latents.shape)}; expected [views={views}, h, w, "
                               f"{unet_config.in_channels}] (NHWC, one object; set num_frames on the UNet config)")
    if prompt_embeds.ndim != 3 or prompt_embeds.shape[0] != 2:
        raise SampleInputError(f"prompt_embeds have shape {tuple(prompt_embeds.shape)}; expected [2, L, ctx] "
                               "= [uncond, cond] for classifier-free guidance")
    if camera is not None and tuple(np.shape(camera)[:1]) != (views,):
        raise SampleInputError(f"camera has shape {tuple(np.shape(camera))}; expected [views={views}, camera_dim]")
    if image_tokens is not None:
        image_tokens = np.asarray(image_tokens)
        if image_tokens.ndim != 3 or image_tokens.shape[0] != 2 * views:
            raise SampleInputError(f"image_tokens have shape {tuple(image_tokens.shape)}; expected [2 * views="
                                   f"{2 * views}, tokens, ctx] (rows [uncond x views, cond x views]) or None")
        halves = image_tokens.reshape(2, views, *image_tokens.shape[1:])  # [2, views, n, ctx]
        if not np.array_equal(halves, np.broadcast_to(halves[:, :1], halves.shape)):
            raise SampleInputError("image_tokens differ between the views of one CFG half; the pipeline repeats one "
                                   "token set per half over the views (repeat_interleave)")
        image_tokens = halves[None, :, 0]  # [1, 2, n, ctx]
    out = sample_batch(unet_config, unet_params, schedule, latents[None], prompt_embeds[None],
                       None if camera is None else np.asarray(camera)[None], image_tokens, np.float32([scale]),
                       guidance_scale, num_inference_steps, return_trajectory)
    if not return_trajectory:
        return out[0]
    final, trajectory = out
    return final[0], Trajectory(*(x[:, 0] for x in trajectory))
