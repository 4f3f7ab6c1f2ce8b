"""Building blocks shared by every model: dense/conv/norm layers that carry logical sharding names, and attention.

Norm statistics and softmax run in float32 whatever the compute dtype; parameters are float32 (`param_dtype`).
"""

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from mvrag_jax.models.attention_kernels import dot_product_attention
from mvrag_jax.sharding import CONV_IN, CONV_OUT, NORM

Dtype = Any


def dense(features: int, axes: tuple[str, str], *, use_bias: bool = True, dtype: Dtype = jnp.float32,
          name: str | None = None) -> nn.Dense:
    """A Linear layer whose kernel [in, out] is named `axes` for sharding (bias gets `axes[1]`)."""
    return nn.Dense(
        features, use_bias=use_bias, dtype=dtype, param_dtype=jnp.float32, name=name,
        kernel_init=nn.with_logical_partitioning(nn.initializers.lecun_normal(), axes),
        bias_init=nn.with_logical_partitioning(nn.initializers.zeros_init(), (axes[1],)))


def conv(features: int, kernel: int = 3, *, stride: int = 1, padding: int | None = None, use_bias: bool = True,
         dtype: Dtype = jnp.float32, name: str | None = None) -> nn.Conv:
    """A 2D NHWC conv with torch-style symmetric padding (default kernel // 2); kernel is HWIO."""
    pad = kernel // 2 if padding is None else padding
    return nn.Conv(
        features, (kernel, kernel), strides=(stride, stride), padding=((pad, pad), (pad, pad)), use_bias=use_bias,
        dtype=dtype, param_dtype=jnp.float32, name=name,
        # Spatial taps stay unnamed (never sharded): flax rejects one logical name on two dims of an array.
        kernel_init=nn.with_logical_partitioning(nn.initializers.lecun_normal(), (None, None, CONV_IN, CONV_OUT)),
        bias_init=nn.with_logical_partitioning(nn.initializers.zeros_init(), (CONV_OUT,)))


def group_norm(num_groups: int, epsilon: float, *, dtype: Dtype = jnp.float32, name: str | None = None) -> nn.GroupNorm:
    """torch.nn.GroupNorm semantics (biased variance, two-pass in float32)."""
    return nn.GroupNorm(
        num_groups=num_groups, epsilon=epsilon, dtype=dtype, param_dtype=jnp.float32, use_fast_variance=False, name=name,
        scale_init=nn.with_logical_partitioning(nn.initializers.ones_init(), (NORM,)),
        bias_init=nn.with_logical_partitioning(nn.initializers.zeros_init(), (NORM,)))


class ResnetBlock(nn.Module):
    """GN -> SiLU -> conv3x3 -> GN -> SiLU -> conv3x3, plus the input (a 1x1 conv named `shortcut_name` when the
    channels change), times `skip_scale`: diffusers' VAE ResnetBlock2D (eps 1e-6, `conv_shortcut`, 1) and LGM's
    ResnetBlock (eps 1e-5, `shortcut`, sqrt(1/2)) are this block with their release's names and constants."""

    out_channels: int
    groups: int
    eps: float
    shortcut_name: str
    skip_scale: float = 1.0
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        h = nn.silu(group_norm(self.groups, self.eps, dtype=self.dtype, name="norm1")(x))
        h = conv(self.out_channels, 3, dtype=self.dtype, name="conv1")(h)
        h = nn.silu(group_norm(self.groups, self.eps, dtype=self.dtype, name="norm2")(h))
        h = conv(self.out_channels, 3, dtype=self.dtype, name="conv2")(h)
        if x.shape[-1] != self.out_channels:
            x = conv(self.out_channels, 1, dtype=self.dtype, name=self.shortcut_name)(x)
        out = x + h
        return out if self.skip_scale == 1.0 else out * self.skip_scale


def layer_norm(epsilon: float, *, use_bias: bool = True, dtype: Dtype = jnp.float32,
               name: str | None = None) -> nn.LayerNorm:
    """torch.nn.LayerNorm semantics (biased variance, two-pass in float32)."""
    return nn.LayerNorm(
        epsilon=epsilon, use_bias=use_bias, dtype=dtype, param_dtype=jnp.float32, use_fast_variance=False, name=name,
        scale_init=nn.with_logical_partitioning(nn.initializers.ones_init(), (NORM,)),
        bias_init=nn.with_logical_partitioning(nn.initializers.zeros_init(), (NORM,)))


def attention(q: jax.Array, k: jax.Array, v: jax.Array, num_heads: int, *, scale: float | None = None,
              mask: jax.Array | None = None, segment_ids: tuple[jax.Array, jax.Array] | None = None,
              kernel: str = "auto") -> jax.Array:
    """softmax(q k^T * scale) v over flattened heads: q [b, lq, heads*dh], k/v [b, lk, heads*dh] -> [b, lq, heads*dh].

    `kernel` is the runtime.attention setting (models/attention_kernels.py: auto | xla | chunked | cudnn |
    pallas_tpu); logits and softmax are float32 in all of them. `scale` defaults to 1/sqrt(dh). `mask` and
    `segment_ids` as in attention_kernels.dot_product_attention.
    """
    b, lq, inner = q.shape
    split = lambda t: t.reshape(t.shape[0], t.shape[1], num_heads, inner // num_heads)  # [b, l, heads, dh]
    out = dot_product_attention(split(q), split(k), split(v), kernel=kernel, scale=scale, mask=mask,
                                segment_ids=segment_ids)
    return out.reshape(b, lq, inner)
