"""vae.npz: diffusers AutoencoderKL encode/decode and the pipeline's decode_latents (cases NCHW, our model NHWC)."""

import jax.numpy as jnp
import numpy as np

from mvrag_jax.models import vae


def _nhwc(x: np.ndarray) -> jnp.ndarray:
    return jnp.asarray(np.transpose(x, (0, 2, 3, 1)))   # [b, c, h, w] -> [b, h, w, c]


def _nchw(x: jnp.ndarray) -> np.ndarray:
    return np.transpose(np.asarray(x), (0, 3, 1, 2))    # [b, h, w, c] -> [b, c, h, w]


def check_vae(models, case):
    config, params = models.get("vae")
    mean, logvar = vae.encode(config, params, _nhwc(case["image"]))
    z = _nhwc(case["z"])
    return {
        "posterior_mean": (_nchw(mean), case["posterior_mean"]),
        "posterior_logvar": (_nchw(logvar), case["posterior_logvar"]),
        "posterior_std": (_nchw(vae.posterior_std(logvar)), case["posterior_std"]),
        "decoded": (_nchw(vae.decode(config, params, z)), case["decoded"]),
        "pipe_decode_latents": (_nchw(vae.decode_latents(config, params, z)), case["pipe_decode_latents"]),
        "scaling_factor": (np.float32(config.scaling_factor), case["scaling_factor"]),
    }
