"""mvrag_jax/models/embeddings.py: the sinusoidal timestep embedding (cos first, float32)."""

import math

import jax.numpy as jnp
import numpy as np

from mvrag_jax.models.embeddings import timestep_embedding


def _float64_embedding(timesteps: np.ndarray, dim: int) -> np.ndarray:
    """The official formula written out in float64: [cos(t f), sin(t f)], f_i = 10000^(-i / half)."""
    half = dim // 2
    freqs = np.exp(-math.log(10000.0) * np.arange(half) / half)
    args = timesteps[:, None].astype(np.float64) * freqs[None]
    return np.concatenate([np.cos(args), np.sin(args)], axis=-1)


def test_cos_comes_first():
    embedding = np.asarray(timestep_embedding(jnp.zeros((1,)), 8))
    np.testing.assert_array_equal(embedding, [[1, 1, 1, 1, 0, 0, 0, 0]])  # cos(0) = 1, sin(0) = 0


def test_matches_float64_formula_at_reference_timesteps():
    timesteps = np.array([981.0, 341.0, 0.0, 1.0], np.float32)
    ours = np.asarray(timestep_embedding(jnp.asarray(timesteps), 32))
    assert ours.dtype == np.float32 and ours.shape == (4, 32)
    # float32 phases of t ~ 1000 are exact to ~1e-4 rad; that is the whole error budget here.
    np.testing.assert_allclose(ours, _float64_embedding(timesteps, 32), atol=2e-4)


def test_odd_dim_gets_a_zero_column():
    embedding = np.asarray(timestep_embedding(jnp.array([5.0, 7.0]), 7))
    assert embedding.shape == (2, 7)
    np.testing.assert_array_equal(embedding[:, -1], 0.0)
    np.testing.assert_allclose(embedding[:, :6], _float64_embedding(np.array([5.0, 7.0]), 6), atol=1e-6)


def test_bfloat16_timesteps_are_embedded_in_float32():
    embedding = timestep_embedding(jnp.array([981.0], jnp.bfloat16), 16)
    assert embedding.dtype == jnp.float32
