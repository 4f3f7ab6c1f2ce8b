"""SigLIP (Zhai et al. 2023) in transformers' SiglipModel layout, for the paper's Table 3 text-image alignment and the
Table 4 SigLIP text->image retriever.

Both towers reuse models/clip.py's pre-LN encoder (SiglipEncoderLayer has CLIP's structure and key names):
* vision: patch conv WITH bias + learned positions (no CLS, no pre-norm) -> encoder -> post_layernorm -> the
  multihead-attention pooling head (a learned `probe` query attends over the tokens with torch's
  nn.MultiheadAttention, whose fused `in_proj_weight/bias` stay as stored; then a residual MLP after `layernorm`);
  the image embedding is that pooled vector (no projection).
* text: token + position embeddings -> bidirectional encoder (no causal mask; SigLIP is trained on max_length
  padding with no attention mask, and the pipeline passes none) -> final_layer_norm -> the LAST token -> `head`.
`logit_scale` / `logit_bias` are kept for the sigmoid probability sigmoid(exp(scale) cos + bias).
"""

import dataclasses
from typing import Any, Mapping

import flax.linen as nn
import jax
import jax.numpy as jnp

from mvrag_jax.models.clip import CLIPEncoder, CLIPMLP, CLIPTextConfig, CLIPVisionConfig, _embed
from mvrag_jax.models.layers import attention, conv, dense, layer_norm
from mvrag_jax.sharding import EMBED, HEADS, NORM
from mvrag_jax.errors import UsageError

SIGLIP_ACT = "gelu_pytorch_tanh"
TEXT_DEFAULTS = dict(vocab_size=32000, hidden_size=768, intermediate_size=3072, num_hidden_layers=12,
                     num_attention_heads=12, max_position_embeddings=64, hidden_act=SIGLIP_ACT, layer_norm_eps=1e-6)
VISION_DEFAULTS = dict(hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12,
                       image_size=224, patch_size=16, num_channels=3, hidden_act=SIGLIP_ACT, layer_norm_eps=1e-6)


@jax.tree_util.register_static
@dataclasses.dataclass(frozen=True)
class SiglipConfig:
    text: CLIPTextConfig
    vision: CLIPVisionConfig
    projection_size: int          # text head output (= vision hidden size in every release)

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> "SiglipConfig":
        """From a transformers SiglipModel config.json (transformers' defaults for absent fields)."""
        text = {**TEXT_DEFAULTS, **dict(values.get("text_config", {}))}
        vision = {**VISION_DEFAULTS, **dict(values.get("vision_config", {}))}
        if vision.get("vision_use_head", True) is False:
            raise UsageError("SigLIP vision_use_head=false has no pooled image embedding; use a SiglipModel release")
        return cls(CLIPTextConfig.from_dict(text), CLIPVisionConfig.from_dict(vision),
                   int(text.get("projection_size", text["hidden_size"])))


class MultiheadAttentionPooling(nn.Module):
    """SiglipMultiheadAttentionPoolingHead: probe [1, 1, d] attends over x [b, l, d] -> [b, d]."""

    config: CLIPVisionConfig

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        cfg, dtype = self.config, jnp.dtype(self.config.dtype)
        d = cfg.hidden_size
        probe = self.param("probe", nn.with_logical_partitioning(nn.initializers.normal(1.0), (None, None, NORM)),
                           (1, 1, d), jnp.float32)
        h = MultiheadAttention(d, cfg.num_attention_heads, dtype, name="attention")(
            jnp.broadcast_to(probe.astype(dtype), (x.shape[0], 1, d)), x)
        out = h + CLIPMLP(cfg, name="mlp")(layer_norm(cfg.layer_norm_eps, dtype=dtype, name="layernorm")(h))
        return out[:, 0]


class MultiheadAttention(nn.Module):
    """torch.nn.MultiheadAttention (batch_first) with its fused in_proj kept as stored: rows [q; k; v]."""

    hidden_size: int
    num_heads: int
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, query: jax.Array, key_value: jax.Array) -> jax.Array:
        d = self.hidden_size
        w = self.param("in_proj_weight", nn.with_logical_partitioning(nn.initializers.lecun_normal(), (HEADS, EMBED)),
                       (3 * d, d), jnp.float32).astype(self.dtype)
        b = self.param("in_proj_bias", nn.with_logical_partitioning(nn.initializers.zeros_init(), (HEADS,)),
                       (3 * d,), jnp.float32).astype(self.dtype)
        q = query @ w[:d].T + b[:d]
        k = key_value @ w[d:2 * d].T + b[d:2 * d]
        v = key_value @ w[2 * d:].T + b[2 * d:]
        return dense(d, (HEADS, EMBED), dtype=self.dtype, name="out_proj")(attention(q, k, v, self.num_heads))


class SiglipVisionModel(nn.Module):
    config: CLIPVisionConfig

    @nn.compact
    def __call__(self, pixel_values: jax.Array) -> jax.Array:
        cfg, dtype = self.config, jnp.dtype(self.config.dtype)
        x = EmbeddingsVision(cfg, name="embeddings")(pixel_values)
        x = CLIPEncoder(cfg, name="encoder")(x)[-1]
        x = layer_norm(cfg.layer_norm_eps, dtype=dtype, name="post_layernorm")(x)
        return MultiheadAttentionPooling(cfg, name="head")(x)


class EmbeddingsVision(nn.Module):
    config: CLIPVisionConfig

    @nn.compact
    def __call__(self, pixel_values: jax.Array) -> jax.Array:
        cfg, dtype = self.config, jnp.dtype(self.config.dtype)
        x = conv(cfg.hidden_size, cfg.patch_size, stride=cfg.patch_size, padding=0, dtype=dtype,
                 name="patch_embedding")(pixel_values)
        x = x.reshape(x.shape[0], -1, cfg.hidden_size)
        positions = cfg.num_positions - 1  # no CLS token in SigLIP
        return x + _embed(positions, cfg.hidden_size, dtype, "position_embedding")(jnp.arange(positions))[None]


class EmbeddingsText(nn.Module):
    config: CLIPTextConfig

    @nn.compact
    def __call__(self, input_ids: jax.Array) -> jax.Array:
        cfg, dtype = self.config, jnp.dtype(self.config.dtype)
        tokens = _embed(cfg.vocab_size, cfg.hidden_size, dtype, "token_embedding")(input_ids)
        return tokens + _embed(cfg.max_position_embeddings, cfg.hidden_size, dtype, "position_embedding")(
            jnp.arange(input_ids.shape[-1]))[None]


class SiglipTextModel(nn.Module):
    config: CLIPTextConfig
    projection_size: int

    @nn.compact
    def __call__(self, input_ids: jax.Array) -> jax.Array:
        cfg, dtype = self.config, jnp.dtype(self.config.dtype)
        x = EmbeddingsText(cfg, name="embeddings")(input_ids)
        x = CLIPEncoder(cfg, name="encoder")(x)[-1]  # no mask: bidirectional
        x = layer_norm(cfg.layer_norm_eps, dtype=dtype, name="final_layer_norm")(x)
        return dense(self.projection_size, (EMBED, EMBED), dtype=dtype, name="head")(x[:, -1])


class SiglipModel(nn.Module):
    config: SiglipConfig

    def setup(self):
        self.text_model = SiglipTextModel(self.config.text, self.config.projection_size)
        self.vision_model = SiglipVisionModel(self.config.vision)
        self.logit_scale = self.param("logit_scale", nn.initializers.zeros_init(), (1,), jnp.float32)
        self.logit_bias = self.param("logit_bias", nn.initializers.zeros_init(), (1,), jnp.float32)

    def image_embeds(self, pixel_values: jax.Array) -> jax.Array:
        return self.vision_model(pixel_values).astype(jnp.float32)

    def text_embeds(self, input_ids: jax.Array) -> jax.Array:
        return self.text_model(input_ids).astype(jnp.float32)

    def __call__(self, input_ids: jax.Array, pixel_values: jax.Array) -> tuple[jax.Array, jax.Array]:
        return self.text_embeds(input_ids), self.image_embeds(pixel_values)


def init_params(config: SiglipConfig, rng: jax.Array) -> Any:
    size = config.vision.image_size
    ids = jnp.zeros((1, config.text.max_position_embeddings), jnp.int32)
    return SiglipModel(config).init(rng, ids, jnp.zeros((1, size, size, config.vision.num_channels)))["params"]


def image_embeds(config: SiglipConfig, params: Any, pixel_values: jax.Array) -> jax.Array:
    """Pooled image embeddings [b, hidden] of normalised NHWC pixels (transformers' get_image_features)."""
    return SiglipModel(config).apply({"params": params}, pixel_values, method=SiglipModel.image_embeds)


def text_embeds(config: SiglipConfig, params: Any, input_ids: jax.Array) -> jax.Array:
    """Text embeddings [b, projection] of max_length-padded ids [b, l] (transformers' get_text_features)."""
    return SiglipModel(config).apply({"params": params}, input_ids, method=SiglipModel.text_embeds)
