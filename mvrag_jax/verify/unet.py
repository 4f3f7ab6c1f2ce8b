"""unet_forward_text.npz / unet_forward_ip.npz: one multiview UNet forward on the release weights.

Cases are NCHW (torch); our UNet is NHWC, so the transposes happen here at the boundary and nowhere else.
"""

import dataclasses

import jax
import numpy as np

from mvrag_jax.models.unet import MultiViewUNet
from mvrag_jax.verify.arrays import nchw, nhwc
from mvrag_jax.verify.models import ReleaseModels


def check_forward(models: ReleaseModels, case: dict[str, np.ndarray]) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    config, params = models.get("unet")
    # Sizes come from the release; the view count is a call-time choice of the case (not in the release config).
    config = dataclasses.replace(config, num_frames=int(case["num_frames"]))
    x = nhwc(case["x"])  # [b * views, h, w, c]
    image_tokens = case.get("images_tokens")  # absent in the text-only case: no image term at all
    apply = jax.jit(MultiViewUNet(config).apply)
    eps = apply({"params": params}, x, case["timesteps"], case["context"], case["camera"], image_tokens,
                case["scale"])  # [b * views, h, w, c]
    return {"eps": (nchw(eps), case["eps"])}
