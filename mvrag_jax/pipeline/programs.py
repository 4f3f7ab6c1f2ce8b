"""The compiled stages of the MV-RAG pipeline: pure functions of (configs, params, arrays), and the per-pipeline cache
that compiles each of them ahead of time once per input signature.

Every stage takes a leading object axis b, so a batch of objects is one call and the rows of the UNet are
[object, CFG half, view]. Configs are static pytrees (no leaves), so they pass straight through `jit`; Python values
that change the program (shapes, processor settings) are bound with `functools.partial` and named in the cache key.
"""

import dataclasses
import time
from typing import Any, Callable

import jax
import jax.numpy as jnp

from mvrag_jax.pipeline import fusion
from mvrag_jax.diffusion.sample import sample_loop
from mvrag_jax.models import clip, dinov2, resampler, vae


# ---- stages (pure; traced inside the compiled programs) ---------------------------------------------------------
def encode_text(config: clip.CLIPTextConfig, params: Any, input_ids: jax.Array) -> jax.Array:
    """Token ids [b, 2, 77] ([uncond, cond] per object) -> prompt embeddings [b, 2, 77, ctx]."""
    b = input_ids.shape[0]
    embeds = clip.encode_text(config, params, input_ids.reshape(2 * b, -1))  # [2b, 77, ctx]
    return embeds.reshape(b, 2, *embeds.shape[1:])


def initial_noise(seeds: jax.Array, shape: tuple[int, ...]) -> jax.Array:
    """Standard-normal latents [b, *shape] float32, one `jax.random.key(seed)` per object (batch-independent)."""
    return jax.vmap(lambda seed: jax.random.normal(jax.random.key(seed), shape, jnp.float32))(seeds)


def encode_retrieved(vision_config: clip.CLIPVisionConfig, vision_params: Any,
                     resampler_config: resampler.ResamplerConfig, resampler_params: Any,
                     pixel_values: jax.Array) -> jax.Array:
    """CLIP pixel values [b, k, s, s, 3] of the retrieved images -> image tokens [b, 2, k * Q, D] ([uncond, cond]).

    The uncond tokens are the official negative: zeros in normalised pixel space through the same CLIP + resampler.
    One zero image stands for all k negatives (they are identical), then is repeated k times, as the official
    '(b n) c f -> b (n c) f' over cat([neg x k, pos x k]) lays them out.
    """
    b, k = pixel_values.shape[:2]
    pixels = pixel_values.reshape(b * k, *pixel_values.shape[2:])
    pixels = jnp.concatenate([jnp.zeros_like(pixels[:1]), pixels])                     # [1 + b k, s, s, 3]
    features = clip.image_features(vision_config, vision_params, pixels)                # [1 + b k, T, hidden]
    tokens = resampler.Resampler(resampler_config).apply({"params": resampler_params}, features)  # [1 + b k, Q, D]
    q, d = tokens.shape[1:]
    negative = jnp.broadcast_to(tokens[0], (b, k, q, d)).reshape(b, k * q, d)           # [b, k Q, D]
    positive = tokens[1:].reshape(b, k * q, d)
    return jnp.stack([negative, positive], axis=1)                                       # [b, 2, k Q, D]


def retrieved_embeddings(config: dinov2.DINOv2Config, params: Any, pixel_values: jax.Array) -> jax.Array:
    """DINOv2 pixel values [b, k, c, c, 3] -> L2-normalised CLS [b, k, d]."""
    b, k = pixel_values.shape[:2]
    return dinov2.cls_embeddings(config, params, pixel_values.reshape(b * k, *pixel_values.shape[2:])).reshape(b, k, -1)


def sample(unet_config: Any, unet_params: Any, tables: tuple[jax.Array, ...], latents: jax.Array,
           prompt_embeds: jax.Array, camera: jax.Array, image_tokens: jax.Array | None, scale: jax.Array,
           guidance_scale: jax.Array) -> jax.Array:
    """One DDIM + CFG pass (prior: image_tokens None) -> final latents [b, views, h, w, c]."""
    final, _ = sample_loop(unet_config, unet_params, *tables, latents, prompt_embeds, camera, image_tokens, scale,
                           guidance_scale)
    return final


def decode(config: vae.VAEConfig, params: Any, latents: jax.Array) -> jax.Array:
    """Latents [b, views, h, w, c] -> images [b, views, H, W, 3] in [0, 1] (the pipeline's decode_latents)."""
    b, views = latents.shape[:2]
    images = vae.decode_latents(config, params, latents.reshape(b * views, *latents.shape[2:]))
    return images.reshape(b, views, *images.shape[1:])


def fusion_from_pixels(config: dinov2.DINOv2Config, params: Any, view_pixels: jax.Array,
                       retrieved: jax.Array) -> tuple[jax.Array, ...]:
    """Exact path, after the host preprocessing: DINOv2 pixels of the views [b, views, c, c, 3] and retrieved
    embeddings [b, k, d] -> (view embeddings [b, views, d], per_view_mean_sim [b, views], score [b], scale [b])."""
    b, views = view_pixels.shape[:2]
    embeddings = dinov2.cls_embeddings(config, params, view_pixels.reshape(b * views, *view_pixels.shape[2:]))
    embeddings = embeddings.reshape(b, views, -1)
    return (embeddings, *fusion.batched_similarity(embeddings, retrieved))


def fusion_on_device(processor: Any, config: dinov2.DINOv2Config, params: Any, views: jax.Array,
                     retrieved: jax.Array) -> tuple[jax.Array, ...]:
    """Device path: float views [b, views, H, W, 3] in [0, 1] -> the outputs of `fusion_from_pixels`."""
    b, n = views.shape[:2]
    embeddings = fusion.device_view_embeddings(config, params, processor, views.reshape(b * n, *views.shape[2:]))
    embeddings = embeddings.reshape(b, n, -1)
    return (embeddings, *fusion.batched_similarity(embeddings, retrieved))


# ---- compile once per signature ---------------------------------------------------------------------------------
def _signature(tree: Any) -> tuple:
    leaves, treedef = jax.tree.flatten(tree)
    return treedef, tuple((tuple(x.shape), str(x.dtype), getattr(x, "sharding", None)) for x in leaves)


@dataclasses.dataclass
class Programs:
    """Ahead-of-time compiled stages, keyed by (stage name, static key, argument shapes/dtypes/shardings, matmul
    precision). Compile time and count are tallied apart from run time; a repeated signature never recompiles."""

    compilations: int = 0
    compile_seconds: float = 0.0
    _cache: dict = dataclasses.field(default_factory=dict)

    def run(self, name: str, fn: Callable[..., Any], *args, static: Any = None) -> Any:
        key = (name, static, _signature(args), jax.config.jax_default_matmul_precision)
        compiled = self._cache.get(key)
        if compiled is None:
            start = time.perf_counter()
            compiled = jax.jit(fn).lower(*args).compile()
            self.compile_seconds += time.perf_counter() - start
            self.compilations += 1
            self._cache[key] = compiled
        return compiled(*args)
