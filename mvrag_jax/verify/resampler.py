"""resampler.npz: the Perceiver resampler on random features and on CLIP hidden_states[-2] (token layout, no NCHW)."""

import numpy as np

from mvrag_jax.models.resampler import resample


def check_resampler(models, case: dict[str, np.ndarray]) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    config, params = models.get("resampler")
    return {
        "tokens": (np.asarray(resample(config, params, case["x"])), case["tokens"]),                 # [n, q, out]
        "tokens_clip": (np.asarray(resample(config, params, case["x_clip"])), case["tokens_clip"]),  # [n, q, out]
    }
