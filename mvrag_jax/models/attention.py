"""Attention of the multiview UNet: decoupled text/image cross-attention, cross-view self-attention, GEGLU FF.

Official counterparts (modules/mv_unet.py): MemoryEfficientCrossAttention -> `CrossAttention`, FeedForward(glu) ->
`FeedForward`, BasicTransformerBlock3D and SpatialTransformer3D keep their names. Submodule names copy the release
keys (`attn2/to_k_ip`, `ff/net_0/proj`, `to_out_0`, `transformer_blocks_0`, ...), so conversion is a rename.
"""

from typing import Any, NamedTuple

import einops
import flax.linen as nn
import jax
import jax.numpy as jnp

from mvrag_jax.models import layers
from mvrag_jax.sharding import ACT_EMBED, BATCH, EMBED, HEADS, LENGTH, MLP

Dtype = Any

# Epsilons of the official modules (torch defaults unless the code sets them).
TRANSFORMER_NORM_EPS = 1e-5     # nn.LayerNorm in BasicTransformerBlock3D
SPATIAL_NORM_EPS = 1e-6         # SpatialTransformer3D.norm = GroupNorm(32, C, eps=1e-6)
NORM_GROUPS = 32
# At inference the image term's weight is (IP_TOTAL_WEIGHT - scale): the two weights sum to 1.5 (official constant).
IP_TOTAL_WEIGHT = 1.5


class FusionWeights(NamedTuple):
    """Weights of the text and image (retrieval) terms of the decoupled cross-attention; each a scalar or one value
    per row [b]. A pytree, so it passes through jit and remat like any array argument.

    Inference (the official mv_unet.py, the paper's f = a * f_txt + (l' - a) * f_ret with l' = 1.5, §3.5):
    `FusionWeights.inference(scale)` = (scale, 1.5 - scale); a plain `scale` means exactly that.
    Training (the paper's f = l * f_txt + f_ret, §3.3): `FusionWeights.training(l)` = (l, 1).
    """
    text: jax.Array | float
    image: jax.Array | float

    @classmethod
    def inference(cls, scale: jax.Array | float) -> "FusionWeights":
        return cls(scale, IP_TOTAL_WEIGHT - jnp.asarray(scale))

    @classmethod
    def training(cls, text_weight: jax.Array | float) -> "FusionWeights":
        return cls(text_weight, 1.0)


def fusion_weights(scale: FusionWeights | jax.Array | float, dtype: Dtype) -> FusionWeights:
    """`scale` as FusionWeights: given ones as they are, an official fusion scale s as (s, 1.5 - s), with s cast to
    `dtype` first (the official order of operations, so a bf16 pipeline rounds as the release's)."""
    return scale if isinstance(scale, FusionWeights) else FusionWeights.inference(jnp.asarray(scale, dtype))


class CrossAttention(nn.Module):
    """softmax(q k^T / sqrt(dim_head)) v with bias-free q/k/v and a biased `to_out_0`.

    With `ip=True` (every attn2 of the release) it also owns `to_k_ip`/`to_v_ip`; when image tokens are given,
        out = w_text * Attn(q, k(text), v(text)) + w_image * Attn(q, k_ip(img), v_ip(img))
    combined before `to_out_0`, with (w_text, w_image) = fusion_weights(scale): an official fusion scale s (a
    scalar or one value per row [b]: a batch of objects, each with its own fusion weight) gives (s, 1.5 - s), as
    the release pipeline; FusionWeights give their own (training: (l, 1)). Without image tokens only the text term
    is used (no factor at all), as officially.
    """
    heads: int
    dim_head: int
    query_dim: int
    ip: bool = False
    dtype: Dtype = jnp.float32
    attention_kernel: str = "auto"  # runtime.attention (models/attention_kernels.py)

    @nn.compact
    def __call__(self, x: jax.Array, context: jax.Array | None = None, image_tokens: jax.Array | None = None,
                 scale: FusionWeights | jax.Array | float = 1.0,
                 segment_ids: tuple[jax.Array, jax.Array] | None = None) -> jax.Array:
        """`segment_ids` (q [b, lq], kv [b, lk]: attend where equal) applies to the text/self term only."""
        inner = self.heads * self.dim_head
        project = lambda name: layers.dense(inner, (EMBED, HEADS), use_bias=False, dtype=self.dtype, name=name)
        context = x if context is None else context  # self-attention when no context (attn1)
        q = project("to_q")(x)  # [b, lq, heads * dh]
        k, v = project("to_k")(context), project("to_v")(context)  # [b, lk, heads * dh]
        out = layers.attention(q, k, v, self.heads, segment_ids=segment_ids,
                               kernel=self.attention_kernel)  # [b, lq, heads * dh]
        if self.ip:
            to_k_ip, to_v_ip = project("to_k_ip"), project("to_v_ip")
            if image_tokens is not None:
                k_ip, v_ip = to_k_ip(image_tokens), to_v_ip(image_tokens)  # [b, n, heads * dh]
                out_ip = layers.attention(q, k_ip, v_ip, self.heads, kernel=self.attention_kernel)
                text_weight, image_weight = (_per_row(w, out.dtype) for w in fusion_weights(scale, out.dtype))
                out = text_weight * out + image_weight * out_ip
            elif self.is_initializing():
                # The release has these params in every attn2: create them even when init sees no image tokens.
                to_k_ip(context), to_v_ip(context)
        return layers.dense(self.query_dim, (HEADS, EMBED), dtype=self.dtype, name="to_out_0")(out)


def _per_row(weight: jax.Array | float, dtype: Dtype) -> jax.Array:
    """A scalar weight as it is; one weight per row (object) [b] -> [b, 1, 1] against [b, l, c]."""
    weight = jnp.asarray(weight, dtype)
    return weight[:, None, None] if weight.ndim == 1 else weight


class GEGLU(nn.Module):
    """Linear(d, 2 * inner) -> (value, gate) halves -> value * gelu(gate) with the exact erf GELU."""
    inner_dim: int
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        value, gate = jnp.split(layers.dense(2 * self.inner_dim, (EMBED, MLP), dtype=self.dtype, name="proj")(x), 2,
                                axis=-1)  # [..., inner] each
        return value * nn.gelu(gate, approximate=False)


class FeedForward(nn.Module):
    """GEGLU feed-forward (`net_0/proj`, dropout `net_1` has no params, `net_2`)."""
    dim: int
    mult: int = 4
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        h = GEGLU(self.dim * self.mult, dtype=self.dtype, name="net_0")(x)  # [..., mult * dim]
        return layers.dense(self.dim, (MLP, EMBED), dtype=self.dtype, name="net_2")(h)


def single_view_segments(single_view: jax.Array, num_frames: int, tokens_per_view: int) -> jax.Array:
    """attn1 segment ids [b, F*l] (tokens attend where ids are equal): objects with single_view[b] attend within each
    view only (MVDream's 2D mode, num_frames=1, in a static-shape batch): id = the token's view; the others across
    all their views: id 0. Ids rather than a [F*l, F*l] mask, so the Pallas flash kernel can run it too."""
    view = jnp.arange(num_frames * tokens_per_view, dtype=jnp.int32) // tokens_per_view  # [F*l] view of each token
    return jnp.where(single_view.astype(bool)[:, None], view[None], 0)


class BasicTransformerBlock3D(nn.Module):
    """Pre-LN block: cross-view self-attention (attn1), text/image cross-attention (attn2), GEGLU FF.

    attn1 attends over the tokens of ALL `num_frames` views of one object jointly; attn2 and FF are per view.
    `single_view` [b] bool (training only; None at inference) restricts attn1 of the marked objects to each view.
    """
    dim: int
    heads: int
    dim_head: int
    num_frames: int
    ip: bool = True                # attn2 owns to_k_ip/to_v_ip (False: text-only MVDream-style base)
    dtype: Dtype = jnp.float32
    attention_kernel: str = "auto"

    @nn.compact
    def __call__(self, x: jax.Array, context: jax.Array, image_tokens: jax.Array | None,
                 scale: FusionWeights | jax.Array | float, single_view: jax.Array | None = None) -> jax.Array:
        norm = lambda name: layers.layer_norm(TRANSFORMER_NORM_EPS, dtype=self.dtype, name=name)
        segments = None if single_view is None else single_view_segments(single_view, self.num_frames, x.shape[1])
        attention = lambda name, ip: CrossAttention(self.heads, self.dim_head, self.dim, ip=ip, dtype=self.dtype,
                                                    attention_kernel=self.attention_kernel, name=name)
        x = einops.rearrange(x, "(b f) l c -> b (f l) c", f=self.num_frames)  # [b, views * l, c]
        x = attention("attn1", False)(norm("norm1")(x), segment_ids=None if segments is None else (segments, segments)) + x
        x = einops.rearrange(x, "b (f l) c -> (b f) l c", f=self.num_frames)  # [b * views, l, c]
        x = attention("attn2", self.ip)(norm("norm2")(x), context, image_tokens, scale) + x
        return FeedForward(self.dim, dtype=self.dtype, name="ff")(norm("norm3")(x)) + x


class SpatialTransformer3D(nn.Module):
    """GroupNorm(eps 1e-6) -> tokens -> proj_in -> `depth` transformer blocks -> proj_out -> + input. NHWC."""
    channels: int
    heads: int
    dim_head: int
    num_frames: int
    depth: int = 1
    ip: bool = True
    dtype: Dtype = jnp.float32
    attention_kernel: str = "auto"

    @nn.compact
    def __call__(self, x: jax.Array, context: jax.Array, image_tokens: jax.Array | None = None,
                 scale: FusionWeights | jax.Array | float = 1.0, single_view: jax.Array | None = None) -> jax.Array:
        inner = self.heads * self.dim_head
        _, height, width, _ = x.shape  # [b * views, h, w, c]
        h = layers.group_norm(NORM_GROUPS, SPATIAL_NORM_EPS, dtype=self.dtype, name="norm")(x)
        h = einops.rearrange(h, "b h w c -> b (h w) c")  # [b * views, h * w, c]
        h = layers.dense(inner, (EMBED, HEADS), dtype=self.dtype, name="proj_in")(h)  # [b * views, h * w, inner]
        h = nn.with_logical_constraint(h, (BATCH, LENGTH, ACT_EMBED))
        for index in range(self.depth):
            h = BasicTransformerBlock3D(inner, self.heads, self.dim_head, self.num_frames, ip=self.ip,
                                        dtype=self.dtype, attention_kernel=self.attention_kernel,
                                        name=f"transformer_blocks_{index}")(h, context, image_tokens, scale,
                                                                            single_view)
            h = nn.with_logical_constraint(h, (BATCH, LENGTH, ACT_EMBED))
        h = layers.dense(self.channels, (HEADS, EMBED), dtype=self.dtype, name="proj_out")(h)  # [b * views, h*w, c]
        return einops.rearrange(h, "b (h w) c -> b h w c", h=height, w=width) + x
