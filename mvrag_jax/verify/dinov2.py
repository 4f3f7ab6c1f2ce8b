"""dinov2.npz: DINOv2 forward (position-embedding interpolation included), the BitImageProcessor and the fusion weight.

Cases are NCHW; our model and processor are NHWC, so arrays are transposed at this boundary only.
"""

from mvrag_jax.pipeline import fusion
from mvrag_jax.models import dinov2
from mvrag_jax.verify.arrays import nchw, nhwc, retrieved_images


def check_dinov2(models, case):
    config, params = models.get("dinov2")
    processor = dinov2.processor_config(models.release)
    hidden = dinov2.last_hidden_state(config, params, nhwc(case["pixel_values"]))
    retrieved = retrieved_images(case)
    views_uint8 = fusion.views_to_uint8(nhwc(case["gen_images"]))
    weight = fusion.fusion_weight(config, params, processor, nhwc(case["gen_images"]), retrieved)
    return {
        "last_hidden_state": (hidden, case["last_hidden_state"]),
        "cls": (hidden[:, 0], case["cls"]),
        "cls_normalized": (dinov2.l2_normalize(hidden[:, 0]), case["cls_normalized"]),
        # Exact: a one-level flip here is a bug, not rounding (the tolerance on 0..255 integers is below one level).
        "gen_images_uint8": (views_uint8, case["gen_images_uint8"]),
        "ret_pixel_values": (nchw(dinov2.preprocess(retrieved, processor)), case["ret_pixel_values"]),
        "gen_pixel_values": (nchw(dinov2.preprocess(list(views_uint8), processor)), case["gen_pixel_values"]),
        "ret_embeddings": (weight.retrieved_embeddings, case["ret_embeddings"]),
        "gen_embeddings": (weight.view_embeddings, case["gen_embeddings"]),
        "per_view_mean_sim": (weight.per_view_mean_sim, case["per_view_mean_sim"]),
        "similarity_score": (weight.score, case["similarity_score"]),
        "alpha": (weight.scale, case["alpha"]),
    }
