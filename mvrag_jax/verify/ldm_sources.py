"""Cases computed by the official MVDream / ImageDream code on their own single-file checkpoints
(tests/reference_configs/mvdream, .../imagedream; tools/official_cases/init_sources.py), checked on our conversion
of those files (mvrag_jax/convert/ldm_sources.py). Cases are NCHW (torch); our models are NHWC.

    mvrag verify-reference --mvdream FILE --mvdream-config YAML --cases DIR       # or --imagedream ...
"""

import dataclasses
import pathlib
from typing import Any

import jax
import numpy as np

from mvrag_jax.convert.ldm_sources import Converted, load_source
from mvrag_jax.models import clip, resampler, vae
from mvrag_jax.models.attention import FusionWeights
from mvrag_jax.models.unet import MultiViewUNet
from mvrag_jax.verify.arrays import nchw, nhwc
from mvrag_jax.verify.models import NotImplementedYet

# ImageDream adds `out + ip_weight * out_ip` (ip_weight 1.0), not MV-RAG's `scale * out + (1.5 - scale) * out_ip`:
# the decoupled cross-attention takes the two weights explicitly.
IMAGEDREAM_WEIGHTS = FusionWeights(text=1.0, image=1.0)


@dataclasses.dataclass
class SourceModels:
    """`ReleaseModels.get` over one converted MVDream/ImageDream source."""
    converted: Converted

    @classmethod
    def open(cls, path: str | pathlib.Path, model: str, config: str | pathlib.Path | None = None) -> "SourceModels":
        return cls(load_source(path, model, config))

    def get(self, name: str) -> tuple[Any, Any]:
        if name not in self.converted.configs:
            raise NotImplementedYet(f"this source has no {name} (a case of the other model?)")
        return self.converted.configs[name], self.converted.params[name]


def check_mvdream_forward(models, case: dict[str, np.ndarray]) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """MVDream's UNet, 4 views with camera, text only."""
    config, params = models.get("unet")
    config = dataclasses.replace(config, num_frames=int(case["num_frames"]))
    eps = jax.jit(MultiViewUNet(config).apply)({"params": params}, nhwc(case["x"]), case["timesteps"],
                                               case["context"], case["camera"])
    return {"eps": (nchw(eps), case["eps"])}


def check_imagedream_forward(models, case: dict[str, np.ndarray]) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """ImageDream's UNet in 4-view mode with image tokens (its resampler on `ip`, no 5th reference view)."""
    config, params = models.get("unet")
    res_config, res_params = models.get("resampler")
    config = dataclasses.replace(config, num_frames=int(case["num_frames"]))
    tokens = resampler.resample(res_config, res_params, case["ip"])  # [rows, queries, ctx]
    eps = jax.jit(MultiViewUNet(config).apply)({"params": params}, nhwc(case["x"]), case["timesteps"],
                                               case["context"], case["camera"], tokens, IMAGEDREAM_WEIGHTS)
    return {"eps": (nchw(eps), case["eps"])}


def check_mvdream_vae(models, case: dict[str, np.ndarray]) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """The ldm AutoencoderKL (first_stage_model) as our diffusers-layout VAE: encode posterior and decode."""
    config, params = models.get("vae")
    mean, logvar = vae.encode(config, params, nhwc(case["image"]))
    return {"posterior_mean": (nchw(mean), case["posterior_mean"]),
            "posterior_logvar": (nchw(logvar), case["posterior_logvar"]),
            "decoded": (nchw(vae.decode(config, params, nhwc(case["z"]))), case["decoded"])}


def check_mvdream_clip_text(models, case: dict[str, np.ndarray]) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """The OpenCLIP text tower (penultimate layer + ln_final) as our CLIPTextModel."""
    config, params = models.get("clip_text")
    return {"last_hidden_state": (np.asarray(clip.encode_text(config, params, case["input_ids"])),
                                  case["last_hidden_state"])}
