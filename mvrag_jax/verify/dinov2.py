"""dinov2.npz: DINOv2 forward (position-embedding interpolation included), the BitImageProcessor and the fusion weight.

Cases are NCHW; our model and processor are NHWC, so arrays are transposed at this boundary only.
"""

import jax.numpy as jnp
import numpy as np

from mvrag_jax import fusion
from mvrag_jax.models import dinov2


def _nhwc(x: np.ndarray) -> np.ndarray:
    return np.transpose(x, (0, 2, 3, 1))   # [b, c, h, w] -> [b, h, w, c]


def _nchw(x) -> np.ndarray:
    return np.transpose(np.asarray(x), (0, 3, 1, 2))


def check_dinov2(models, case):
    config, params = models.get("dinov2")
    processor = dinov2.processor_config(models.release)
    hidden = dinov2.last_hidden_state(config, params, jnp.asarray(_nhwc(case["pixel_values"])))
    retrieved = [case[key] for key in sorted(k for k in case if k.startswith("ret_image_"))]
    views_uint8 = fusion.views_to_uint8(_nhwc(case["gen_images"]))
    weight = fusion.fusion_weight(config, params, processor, _nhwc(case["gen_images"]), retrieved)
    return {
        "last_hidden_state": (hidden, case["last_hidden_state"]),
        "cls": (hidden[:, 0], case["cls"]),
        "cls_normalized": (dinov2.l2_normalize(hidden[:, 0]), case["cls_normalized"]),
        # Exact: a one-level flip here is a bug, not rounding (the tolerance on 0..255 integers is below one level).
        "gen_images_uint8": (views_uint8, case["gen_images_uint8"]),
        "ret_pixel_values": (_nchw(dinov2.preprocess(retrieved, processor)), case["ret_pixel_values"]),
        "gen_pixel_values": (_nchw(dinov2.preprocess(list(views_uint8), processor)), case["gen_pixel_values"]),
        "ret_embeddings": (weight.retrieved_embeddings, case["ret_embeddings"]),
        "gen_embeddings": (weight.view_embeddings, case["gen_embeddings"]),
        "per_view_mean_sim": (weight.per_view_mean_sim, case["per_view_mean_sim"]),
        "similarity_score": (weight.score, case["similarity_score"]),
        "alpha": (weight.scale, case["alpha"]),
    }
