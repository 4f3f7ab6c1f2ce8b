"""The official image preprocessing (to_pil_image + PIL-backend processor) as jnp, for images already on device.

The fusion weight embeds the prior pass's decoded views with DINOv2. Officially they go to the host: float [0, 1] ->
uint8 by truncation (to_pil_image) -> PIL resize -> center crop -> rescale -> normalise (`images.clip_preprocess`).
Here the same steps run inside a compiled program, reproducing Pillow's 8-bit resampling in integer arithmetic:
separable passes (horizontal, then vertical), each with Pillow's float64 filter coefficients quantised to 22-bit
fixed point, accumulated in int32 from a half-unit offset and shifted back to uint8 (`ImagingResample`). The
coefficient tables are computed once on the host; the program sees them as int32 constants.

    pixels = preprocess_views(views, processor)   # [n, H, W, 3] float in [0, 1] -> [n, crop_h, crop_w, 3] float32
"""


import jax
import jax.numpy as jnp
import numpy as np
from PIL import Image

from mvrag_jax.inputs import images

PRECISION_BITS = 32 - 8 - 2  # Pillow's fixed-point precision for 8-bit images (Resample.c)


def _bilinear(x: np.ndarray) -> np.ndarray:
    x = np.abs(x)
    return np.where(x < 1.0, 1.0 - x, 0.0)


def _bicubic(x: np.ndarray) -> np.ndarray:
    a, x = -0.5, np.abs(x)  # Pillow's bicubic uses a = -0.5 (torch's uses -0.75)
    return np.where(x < 1.0, ((a + 2.0) * x - (a + 3.0)) * x * x + 1,
                    np.where(x < 2.0, (((x - 5) * x + 8) * x - 4) * a, 0.0))


# Pillow filter id -> (filter, support)
_FILTERS = {int(Image.Resampling.BILINEAR): (_bilinear, 1.0), int(Image.Resampling.BICUBIC): (_bicubic, 2.0)}


def pil_coefficients(in_size: int, out_size: int, resample: int) -> np.ndarray:
    """[out_size, in_size] int32 fixed-point weights of one Pillow resampling pass (precompute_coeffs +
    normalize_coeffs_8bpc), zero outside each output pixel's taps."""
    if resample not in _FILTERS:
        raise images.ImageError(f"on-device preprocessing implements PIL resample filters {sorted(_FILTERS)} "
                                f"(bilinear, bicubic), not {resample}; use fusion_path='exact'")
    kernel, support = _FILTERS[resample]
    scale = in_size / out_size
    filterscale = max(scale, 1.0)
    support = support * filterscale
    weights = np.zeros((out_size, in_size), np.float64)
    for xx in range(out_size):
        center = (xx + 0.5) * scale
        xmin = max(int(center - support + 0.5), 0)
        xmax = min(int(center + support + 0.5), in_size)
        taps = kernel((np.arange(xmin, xmax) - center + 0.5) / filterscale)
        total = taps.sum()
        weights[xx, xmin:xmax] = taps / total if total != 0.0 else taps
    scaled = weights * (1 << PRECISION_BITS)
    # C's (int) truncates toward zero after the +-0.5: round half away from zero
    return np.where(weights < 0, np.trunc(scaled - 0.5), np.trunc(scaled + 0.5)).astype(np.int32)


def _resample_axis(levels: jax.Array, coefficients: np.ndarray, axis: int) -> jax.Array:
    """One Pillow pass over `axis` of int32 levels [n, h, w, c] -> int32 levels in [0, 255]."""
    spec = "nhwc,oh->nowc" if axis == 1 else "nhwc,ow->nhoc"
    total = jnp.einsum(spec, levels, jnp.asarray(coefficients), preferred_element_type=jnp.int32)
    total = total + (1 << (PRECISION_BITS - 1))
    return jnp.clip(jnp.right_shift(total, PRECISION_BITS), 0, 255)  # clip8: negatives -> 0, overflow -> 255


def pil_resize_levels(levels: jax.Array, height: int, width: int, resample: int) -> jax.Array:
    """Image.resize((width, height), resample) of 8-bit RGB images given as int32 levels [n, h, w, c]."""
    _, h, w, _ = levels.shape
    if w != width:  # Pillow runs the horizontal pass first and skips a pass whose size is unchanged
        levels = _resample_axis(levels, pil_coefficients(w, width, resample), axis=2)
    if h != height:
        levels = _resample_axis(levels, pil_coefficients(h, height, resample), axis=1)
    return levels


def _center_crop(x: jax.Array, height: int, width: int) -> jax.Array:
    """images.center_crop on [n, h, w, c]: offsets (size - crop) // 2, zero padding when the crop is larger."""
    h, w = x.shape[1:3]
    if h < height or w < width:
        canvas_h, canvas_w = max(height, h), max(width, w)
        top, left = -(-(canvas_h - h) // 2), -(-(canvas_w - w) // 2)
        x = jnp.pad(x, ((0, 0), (top, canvas_h - h - top), (left, canvas_w - w - left), (0, 0)))
        h, w = canvas_h, canvas_w
    top, left = (h - height) // 2, (w - width) // 2
    return x[:, top:top + height, left:left + width]


def preprocess_views(views: jax.Array, config: images.CLIPImageProcessorConfig) -> jax.Array:
    """Float views [n, H, W, 3] in [0, 1] -> processor pixel values [n, crop_h, crop_w, 3] float32, as
    `images.clip_preprocess(list(fusion.views_to_uint8(views)), config)` computes them on the host."""
    levels = jnp.floor(views.astype(jnp.float32) * jnp.float32(255)).astype(jnp.int32)  # to_pil_image truncation
    if config.do_resize:
        height, width = (images.shortest_edge_size(*views.shape[1:3], config.shortest_edge)
                         if config.shortest_edge is not None else config.resize_hw)
        levels = pil_resize_levels(levels, height, width, config.resample)
    if config.do_center_crop:
        levels = _center_crop(levels, *config.crop_hw)
    # Rescale and normalise map each (level, channel) to one float32 value; a [256, 3] table built on the host with
    # the host path's own arithmetic holds those values exactly (XLA may turn the division into a reciprocal multiply).
    table = images.rescale_normalize(np.arange(256, dtype=np.uint8)[:, None].repeat(3, axis=1), config)  # [256, 3]
    return jnp.asarray(table)[levels, jnp.arange(3)]
