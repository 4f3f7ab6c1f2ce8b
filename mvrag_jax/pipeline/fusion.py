"""The fusion weight of MV-RAG: how much the main pass trusts the retrieved images (official f_score.py + pipeline).

After a short prior pass without image tokens, the decoded views and the retrieved images are embedded with DINOv2
(L2-normalised CLS). The score is the best view's mean cosine similarity to the retrieved images, and the main pass
uses scale = max(0, score) in every decoupled cross-attention.

Two paths compute the view embeddings:
- exact (`fusion_weight`): the views cross to the host, as officially: quantised to uint8 (x * 255, truncated, as
  torchvision's to_pil_image does) and resized with PIL.
- device (`device_view_embeddings`): the same quantisation and Pillow's 8-bit resampling reproduced in jnp
  (mvrag_jax/pipeline/device_preprocess.py), so prior pass, fusion and main pass need no host round trip.

    processor = dinov2.processor_config(release)   # facebook/dinov2-base/preprocessor_config.json
    weight = fusion_weight(dino_config, dino_params, processor, views, retrieved_pil_images)
    scale = weight.scale   # float32 scalar for the main pass
"""

import dataclasses
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from mvrag_jax.inputs import images
from mvrag_jax.pipeline import device_preprocess
from mvrag_jax.models import dinov2

COSINE_EPS = 1e-8  # torch.nn.functional.cosine_similarity default


@dataclasses.dataclass(frozen=True)
class FusionWeight:
    scale: np.ndarray               # () float32: max(0, score), the main pass's ip scale
    score: np.ndarray               # () float32: max over views of per_view_mean_sim
    per_view_mean_sim: np.ndarray   # [views] float32: mean cosine similarity of each view to the retrieved images
    view_embeddings: np.ndarray     # [views, d] L2-normalised DINOv2 CLS of the decoded views
    retrieved_embeddings: np.ndarray  # [k, d] the same for the retrieved images


def views_to_uint8(views: Any) -> np.ndarray:
    """Float views [n, h, w, c] in [0, 1] -> uint8, as to_pil_image does: (x * 255) in float32, truncated.

    Values outside [0, 1] are an error rather than a silent wrap (the pipeline clamps before this).
    """
    views = np.asarray(views, np.float32)
    if views.ndim != 4 or views.shape[-1] not in (1, 3):
        raise ValueError(f"views must be NHWC [n, h, w, 1|3] floats in [0, 1], got shape {views.shape}; transpose "
                         "NCHW tensors with np.transpose(x, (0, 2, 3, 1))")
    if views.size and (views.min() < 0 or views.max() > 1):
        raise ValueError(f"views must lie in [0, 1] (got [{views.min():.4f}, {views.max():.4f}]); clip the decoded "
                         "images first, as vae.decode_latents does")
    return (views * np.float32(255)).astype(np.uint8)


def cosine_similarity(x: jax.Array, y: jax.Array) -> jax.Array:
    """[n, d] x [k, d] -> [n, k], torch's formula: each side divided by max(||.||, eps) before the dot product."""
    unit = lambda t: t / jnp.maximum(jnp.linalg.norm(t, axis=-1, keepdims=True), COSINE_EPS)
    return jnp.einsum("nd,kd->nk", unit(x), unit(y), precision=jax.lax.Precision.HIGHEST)


def per_view_mean_similarity(view_embeddings: jax.Array, retrieved_embeddings: jax.Array) -> jax.Array:
    """[views]: mean over the retrieved images of each view's cosine similarity."""
    return cosine_similarity(view_embeddings, retrieved_embeddings).mean(axis=-1)


def similarity_score(view_embeddings: jax.Array, retrieved_embeddings: jax.Array) -> jax.Array:
    """f_score.get_similarity_score: the best view's mean similarity (scalar)."""
    return per_view_mean_similarity(view_embeddings, retrieved_embeddings).max()


def fusion_scale(score: jax.Array) -> jax.Array:
    """The pipeline's max(0, score): negative agreement switches the image branch off, never inverts it."""
    return jnp.maximum(score, 0.0)


def fusion_weight(config: dinov2.DINOv2Config, params: Any, processor: images.CLIPImageProcessorConfig, views: Any,
                  retrieved: Sequence[Any]) -> FusionWeight:
    """Fusion weight of decoded views [F, h, w, 3] in [0, 1] (NHWC) against retrieved PIL images / uint8 arrays."""
    if len(retrieved) == 0:
        raise ValueError("fusion_weight needs at least one retrieved image; the score is a mean over them")
    view_embeddings = dinov2.embed_images(config, params, processor, list(views_to_uint8(views)))
    retrieved_embeddings = dinov2.embed_images(config, params, processor, retrieved)
    per_view = per_view_mean_similarity(view_embeddings, retrieved_embeddings)
    score = per_view.max()
    as_np = lambda x: np.asarray(x, np.float32)
    return FusionWeight(scale=as_np(fusion_scale(score)), score=as_np(score), per_view_mean_sim=as_np(per_view),
                        view_embeddings=as_np(view_embeddings), retrieved_embeddings=as_np(retrieved_embeddings))


def batched_similarity(view_embeddings: jax.Array, retrieved_embeddings: jax.Array
                       ) -> tuple[jax.Array, jax.Array, jax.Array]:
    """Per object of a batch: view embeddings [b, views, d], retrieved [b, k, d] -> (per_view_mean_sim [b, views],
    score [b], scale [b]). Pure jnp: runs inside the pipeline's compiled programs."""
    per_view = jax.vmap(per_view_mean_similarity)(view_embeddings, retrieved_embeddings)
    score = per_view.max(axis=-1)
    return per_view, score, fusion_scale(score)


def device_view_embeddings(config: dinov2.DINOv2Config, params: Any, processor: images.CLIPImageProcessorConfig,
                           views: jax.Array) -> jax.Array:
    """The on-device path: L2-normalised DINOv2 CLS [n, d] of float views [n, H, W, 3] in [0, 1], with the uint8
    truncation and PIL resize done in jnp (bit-exact with the host path for the same float views)."""
    return dinov2.cls_embeddings(config, params, device_preprocess.preprocess_views(views, processor))
