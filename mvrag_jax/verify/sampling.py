"""ddim_sample.npz: the official DDIM + CFG loop, with image tokens (`ip_`) and without (`noip_`, the prior pass).

Cases are NCHW (torch); our loop is NHWC, so the transposes happen here at the boundary. Per-step arrays are stacked
over steps: [steps, rows, c, h, w] in the case, [steps, rows, h, w, c] in our Trajectory.
"""

import dataclasses

import numpy as np

from mvrag_jax.diffusion import ddim
from mvrag_jax.diffusion.sample import sample
from mvrag_jax.models import vae
from mvrag_jax.verify.arrays import exact, nchw, nhwc
from mvrag_jax.verify.models import ReleaseModels


def _per_step_nchw(x) -> np.ndarray:
    return np.stack([nchw(step) for step in np.asarray(x)])  # [steps, rows, h, w, c] -> [steps, rows, c, h, w]


def check_ddim_sample(models: ReleaseModels, case: dict[str, np.ndarray]) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    config, params = models.get("unet")
    # Sizes come from the release; the view count is a call-time choice of the case (not in the release config).
    config = dataclasses.replace(config, num_frames=int(case["num_frames"]))
    vae_config, vae_params = models.get("vae")
    schedule = ddim.DDIMSchedule.from_release(models.release)
    steps = int(case["num_inference_steps"])
    pairs = {"alphas_cumprod": (ddim.alphas_cumprod(schedule), case["alphas_cumprod"])}
    runs = {"ip": (case["image_tokens"], float(case["scale"])), "noip": (None, 1.0)}  # noip = the prior pass
    for tag, (image_tokens, scale) in runs.items():
        final, trajectory = sample(config, params, schedule, nhwc(case["initial_latents"]), case["prompt_embeds"],
                                   case["camera"], image_tokens, scale, float(case["guidance_scale"]), steps,
                                   return_trajectory=True)
        images = vae.decode_latents(vae_config, vae_params, final)  # [views, H, W, 3] in [0, 1]
        pairs.update({
            f"{tag}_timesteps": exact(ddim.timesteps(schedule, steps), case[f"{tag}_timesteps"]),
            f"{tag}_unet_eps": (_per_step_nchw(trajectory.unet_eps), case[f"{tag}_unet_eps"]),
            f"{tag}_noise_pred_cfg": (_per_step_nchw(trajectory.noise_pred_cfg), case[f"{tag}_noise_pred_cfg"]),
            f"{tag}_latents_per_step": (_per_step_nchw(trajectory.latents), case[f"{tag}_latents_per_step"]),
            f"{tag}_final_latents": (nchw(final), case[f"{tag}_final_latents"]),
            f"{tag}_images": (nchw(images), case[f"{tag}_images"]),
        })
    return pairs
