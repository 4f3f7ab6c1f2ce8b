"""vae.npz: diffusers AutoencoderKL encode/decode and the pipeline's decode_latents (cases NCHW, our model NHWC)."""

import numpy as np

from mvrag_jax.models import vae
from mvrag_jax.verify.arrays import nchw, nhwc


def check_vae(models, case):
    config, params = models.get("vae")
    mean, logvar = vae.encode(config, params, nhwc(case["image"]))
    z = nhwc(case["z"])
    return {
        "posterior_mean": (nchw(mean), case["posterior_mean"]),
        "posterior_logvar": (nchw(logvar), case["posterior_logvar"]),
        "posterior_std": (nchw(vae.posterior_std(logvar)), case["posterior_std"]),
        "decoded": (nchw(vae.decode(config, params, z)), case["decoded"]),
        "pipe_decode_latents": (nchw(vae.decode_latents(config, params, z)), case["pipe_decode_latents"]),
        "scaling_factor": (np.float32(config.scaling_factor), case["scaling_factor"]),
    }
