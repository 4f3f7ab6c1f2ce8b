"""Sinusoidal timestep embedding of the multiview UNet (official `mv_unet.timestep_embedding`).

The learned MLPs on top of it (`time_embed_0/2`, `camera_embed_0/2`) live in the UNet itself, because their param
paths sit at the top level of the release's UNet state dict.
"""

import math

import jax
import jax.numpy as jnp


def timestep_embedding(timesteps: jax.Array, dim: int, max_period: float = 10000.0) -> jax.Array:
    """[n] float timesteps -> [n, dim] float32 embedding: concat(cos(t * f), sin(t * f)) with cos FIRST.

    f_i = exp(-ln(max_period) * i / half) for i in [0, half). An odd `dim` gets a trailing zero column, as in the
    official code. Computed in float32 whatever the model's compute dtype: the phases of t ~ 1000 need the mantissa.
    """
    half = dim // 2
    freqs = jnp.exp(-math.log(max_period) * jnp.arange(half, dtype=jnp.float32) / half)  # [half]
    args = timesteps.astype(jnp.float32)[:, None] * freqs[None, :]  # [n, half]
    embedding = jnp.concatenate([jnp.cos(args), jnp.sin(args)], axis=-1)  # [n, 2 * half]
    if dim % 2:
        embedding = jnp.pad(embedding, ((0, 0), (0, 1)))  # [n, dim]
    return embedding
