"""The instance-retrieval ("IR") network of the paper's Table 1: Shao & Cui's 1st-place Google Universal Image
Embedding model (arXiv 2210.08473, github ShihaoShao-GH/1st-Place-Solution-in-Google-Universal-Image-Embedding).

It is OpenCLIP's ViT-H/14 image tower fine-tuned at 290 px with an overlapping patch embedding (its
`open_clip_280_overlap` package: conv kernel 14, stride 12 -> a 24 x 24 grid, 577 positions), then

    ln_post(CLS) @ proj (1280 -> 1024, OpenCLIP's bias-free CLIP projection) -> fc1 (1024 -> 64, with bias)

The training scripts' `add_layer_model` puts dropout (train only) between the two and a CosFace head `fc2` (64 ->
classes, training only) after fc1; fc2 is not part of the embedding. The tower is our CLIPVisionModel (same
pre-LN blocks as OpenCLIP's ResidualAttentionBlock: LayerNorm eps 1e-5, exact GELU, fused-qkv attention split into
q/k/v) with `patch_stride` set; `backbone/` holds it in the transformers layout, so convert/guie_keys.py is a rename
table from the released OpenCLIP keys plus the in_proj split.
"""

import dataclasses
from typing import Any, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp

from mvrag_jax.models.clip import CLIPVisionConfig, CLIPVisionModel
from mvrag_jax.models.layers import dense
from mvrag_jax.sharding import EMBED, MLP

# The released model (ViT-H-14-290 of open_clip_280_overlap): width 1280, 32 layers, head_width 80 -> 16 heads.
GUIE_VISION = dict(hidden_size=1280, intermediate_size=5120, num_hidden_layers=32, num_attention_heads=16,
                   image_size=290, patch_size=14, patch_stride=12, hidden_act="gelu", layer_norm_eps=1e-5)
OPENCLIP_HEAD_WIDTH = 80  # OpenCLIP ViT-H's head_width: heads = width / 80 when a config does not say
PROJECTION_DIM = 1024
EMBEDDING_DIM = 64
# OpenCLIP's (= OpenAI CLIP's) normalisation, which the GUIE training transform applies after Resize(290, 290).
MEAN = (0.48145466, 0.4578275, 0.40821073)
STD = (0.26862954, 0.26130258, 0.27577711)


@jax.tree_util.register_static
@dataclasses.dataclass(frozen=True)
class GUIEConfig:
    vision: CLIPVisionConfig = CLIPVisionConfig(**GUIE_VISION)
    projection_dim: int = PROJECTION_DIM   # CLIP projection (visual.proj) output
    embedding_dim: int = EMBEDDING_DIM     # fc1 output: the competition's 64-d embedding


class GUIEOutput(NamedTuple):
    projection: jax.Array   # [b, projection_dim]: ln_post(CLS) @ proj (the fine-tuned CLIP image embedding)
    embedding: jax.Array    # [b, embedding_dim]: fc1(projection), the space the CosFace loss trained


class GUIEModel(nn.Module):
    """pixel_values [b, 290, 290, 3] (NHWC, CLIP-normalised) -> GUIEOutput."""

    config: GUIEConfig

    @nn.compact
    def __call__(self, pixel_values: jax.Array) -> GUIEOutput:
        cfg = self.config
        dtype = jnp.dtype(cfg.vision.dtype)
        pooled = CLIPVisionModel(cfg.vision, name="backbone")(pixel_values).pooler_output  # [b, hidden]
        # OpenCLIP stores the projection as [width, output_dim] and computes x @ proj: a named param, not a Linear.
        proj = self.param("proj", nn.with_logical_partitioning(nn.initializers.normal(cfg.vision.hidden_size ** -0.5),
                                                               (EMBED, MLP)),
                          (cfg.vision.hidden_size, cfg.projection_dim), jnp.float32)
        projection = pooled @ proj.astype(dtype)  # [b, projection_dim]
        embedding = dense(cfg.embedding_dim, (MLP, EMBED), dtype=dtype, name="fc1")(projection)
        return GUIEOutput(projection.astype(jnp.float32), embedding.astype(jnp.float32))


def init_params(config: GUIEConfig, rng: jax.Array) -> Any:
    """The (logically boxed) params of a fresh model; pure, so it works under jax.eval_shape."""
    size = config.vision.image_size
    return GUIEModel(config).init(rng, jnp.zeros((1, size, size, config.vision.num_channels)))["params"]


def embed(config: GUIEConfig, params: Any, pixel_values: jax.Array) -> GUIEOutput:
    return GUIEModel(config).apply({"params": params}, pixel_values)
