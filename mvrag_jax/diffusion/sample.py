"""The DDIM + classifier-free-guidance sampling loop (official MVRAGPipeline._sample) as one jitted `lax.scan`.

    final = sample(unet_config, unet_params, schedule, latents, prompt_embeds, camera, image_tokens, scale,
                   guidance_scale=5.0, num_inference_steps=50)

Scheduler tables (timesteps, previous timesteps, alphas_cumprod, final alpha) are computed once on the host and enter
the compiled loop as arrays, so calls with the same shapes, step count and config reuse one compilation whatever the
latents, prompts, scale or guidance values. Rows of every batched UNet input are [uncond views..., cond views...].
"""

from typing import Any, NamedTuple

import einops
import jax
import jax.numpy as jnp
import numpy as np

from mvrag_jax.diffusion import ddim
from mvrag_jax.models.unet import MultiViewUNet, UNetConfig


class Trajectory(NamedTuple):
    """Per-step values of one sampling run, stacked over steps (NHWC)."""
    unet_eps: jax.Array        # [steps, 2 * views, h, w, c] raw UNet output, rows [uncond views..., cond views...]
    noise_pred_cfg: jax.Array  # [steps, views, h, w, c] uncond + g * (cond - uncond)
    latents: jax.Array         # [steps, views, h, w, c] latents after each DDIM step


class SampleInputError(ValueError):
    """Sampling inputs have inconsistent shapes."""


def _guided_step(config: UNetConfig, params: Any, x: jax.Array, t: jax.Array, t_prev: jax.Array,
                 context: jax.Array, camera: jax.Array | None, image_tokens: jax.Array | None, scale: jax.Array,
                 guidance_scale: jax.Array, alphas_cumprod: jax.Array,
                 final_alpha: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
    """One CFG denoising step from x_t [views, h, w, c]: (unet eps [2 * views, ...], guided noise, x_{t_prev})."""
    x_in = jnp.concatenate([x, x], axis=0)  # [2 * views, h, w, c]: the uncond and cond halves see the same latents
    t_in = jnp.full((x_in.shape[0],), t, jnp.float32)  # the official pipeline feeds timesteps as float
    eps = MultiViewUNet(config).apply({"params": params}, x_in, t_in, context, camera, image_tokens, scale)
    eps_uncond, eps_cond = jnp.split(eps.astype(jnp.float32), 2, axis=0)  # [views, h, w, c] each
    noise = eps_uncond + guidance_scale * (eps_cond - eps_uncond)
    return eps, noise, ddim.ddim_step(x, noise, t, t_prev, alphas_cumprod, final_alpha)


def _sample_loop(config: UNetConfig, params: Any, alphas_cumprod: jax.Array, final_alpha: jax.Array,
                 timesteps: jax.Array, previous_timesteps: jax.Array, latents: jax.Array, prompt_embeds: jax.Array,
                 camera: jax.Array | None, image_tokens: jax.Array | None, scale: jax.Array,
                 guidance_scale: jax.Array, return_trajectory: bool) -> tuple[jax.Array, Trajectory | None]:
    views = config.num_frames
    # [2, L, ctx] -> [2 * views, L, ctx]: each prompt embedding repeated once per view (uncond rows first)
    context = einops.repeat(prompt_embeds, "g l c -> (g f) l c", f=views)
    camera = None if camera is None else jnp.concatenate([camera, camera], axis=0)  # [2 * views, camera_dim]

    def step(x, t_pair):
        t, t_prev = t_pair
        eps, noise, x_prev = _guided_step(config, params, x, t, t_prev, context, camera, image_tokens, scale,
                                          guidance_scale, alphas_cumprod, final_alpha)
        return x_prev, Trajectory(eps, noise, x_prev) if return_trajectory else None

    final, trajectory = jax.lax.scan(step, latents.astype(jnp.float32), (timesteps, previous_timesteps))
    return final, trajectory


# config (a static pytree) and return_trajectory select the compilation; everything else is traced.
sample_jitted = jax.jit(_sample_loop, static_argnames=("return_trajectory",))


def _check_inputs(config: UNetConfig, latents, prompt_embeds, camera, image_tokens):
    views = config.num_frames
    if latents.ndim != 4 or latents.shape[0] != views or latents.shape[-1] != config.in_channels:
        raise SampleInputError(f"latents have shape {tuple(latents.shape)}; expected [views={views}, h, w, "
                               f"{config.in_channels}] (NHWC, one object; set num_frames on the UNet config)")
    if prompt_embeds.ndim != 3 or prompt_embeds.shape[0] != 2:
        raise SampleInputError(f"prompt_embeds have shape {tuple(prompt_embeds.shape)}; expected [2, L, ctx] "
                               "= [uncond, cond] for classifier-free guidance")
    if camera is not None and tuple(camera.shape[:1]) != (views,):
        raise SampleInputError(f"camera has shape {tuple(camera.shape)}; expected [views={views}, camera_dim]")
    if image_tokens is not None and (image_tokens.ndim != 3 or image_tokens.shape[0] != 2 * views):
        raise SampleInputError(f"image_tokens have shape {tuple(image_tokens.shape)}; expected [2 * views="
                               f"{2 * views}, tokens, ctx] (rows [uncond x views, cond x views]) or None")


def sample(unet_config: UNetConfig, unet_params: Any, schedule: ddim.DDIMSchedule, latents, prompt_embeds, camera,
           image_tokens, scale: float, guidance_scale: float, num_inference_steps: int,
           return_trajectory: bool = False) -> jax.Array | tuple[jax.Array, Trajectory]:
    """DDIM (eta 0) with classifier-free guidance from initial latents [views, h, w, c] (NHWC) to final latents.

    prompt_embeds [2, L, ctx] = [uncond, cond]; camera [views, camera_dim] or None; image_tokens [2 * views, n, ctx]
    or None (prior pass: text-only cross-attention); scale: the image-attention fusion scale (1.0 without tokens).
    With return_trajectory, also returns the per-step Trajectory.
    """
    latents, prompt_embeds = jnp.asarray(latents), jnp.asarray(prompt_embeds)
    camera = None if camera is None else jnp.asarray(camera, jnp.float32)
    image_tokens = None if image_tokens is None else jnp.asarray(image_tokens)
    _check_inputs(unet_config, latents, prompt_embeds, camera, image_tokens)
    # Host-side tables, once per call; int32 timesteps index the alphas table inside the loop.
    timesteps = ddim.timesteps(schedule, num_inference_steps).astype(np.int32)
    previous = ddim.previous_timesteps(schedule, num_inference_steps).astype(np.int32)
    final, trajectory = sample_jitted(
        unet_config, unet_params, ddim.alphas_cumprod(schedule), ddim.final_alpha(schedule), timesteps, previous,
        latents, prompt_embeds, camera, image_tokens, jnp.float32(scale), jnp.float32(guidance_scale),
        return_trajectory=return_trajectory)
    return (final, trajectory) if return_trajectory else final
