"""Image augmentations, each a pure function of (image, rng, parameters) -> new uint8 image.

3D mode simulates "retrieved" images from extra renders of the same object (the paper's recipe, C.1: perspective
distortion, rotation, random resized crop, colour jitter), so the model learns to use references that are not
aligned views. Geometric ops fill uncovered pixels with the render background, so no black corners leak in.

Which ops make one retrieved image is drawn first (`draw_ops`, each with its `*_prob` of cfg.mode_3d.augment) and
kept as bit flags, so the preview can label every retrieval with what made it:

    ops = draw_ops(rng, params)                          # e.g. PERSPECTIVE | CROP | JITTER
    image = simulate_retrieval(render, rng, size=224, params=params, background=grey, ops=ops)
    describe(ops)                                        # "P+C+J" (see LEGEND)
"""

import numpy as np
from PIL import Image

from mvrag_jax.errors import MvragError

# Provenance flags of a retrieved image (the loader's `retrieved_ops` with provenance=True).
PERSPECTIVE, ROTATION, CROP, JITTER, VARIANT, SAME_CLASS = 1, 2, 4, 8, 16, 32
ALL_OPS = PERSPECTIVE | ROTATION | CROP | JITTER
_NAMES = ((PERSPECTIVE, "P", "perspective"), (ROTATION, "R", "rotation"), (CROP, "C", "crop"),
          (JITTER, "J", "colour jitter"), (VARIANT, "variant", "semantic variant"),
          (SAME_CLASS, "class", "same-class image"))
LEGEND = ", ".join(f"{short} = {long}" for _, short, long in _NAMES)
_PROBS = (("perspective_prob", PERSPECTIVE), ("rotation_prob", ROTATION), ("crop_prob", CROP),
          ("jitter_prob", JITTER))


class AugmentConfigError(MvragError, ValueError):
    pass


def check_params(params, field: str = "mode_3d.augment") -> None:
    """Probabilities in [0, 1], strengths >= 0, crop ranges ordered: one error naming field, value and fix."""
    for name, _ in _PROBS:
        value = getattr(params, name)
        if not 0.0 <= value <= 1.0:
            raise AugmentConfigError(f"--config.{field}.{name}={value!r}; a probability is in [0, 1]")
    for name in ("perspective", "rotation_deg", "brightness", "contrast", "saturation", "hue"):
        if getattr(params, name) < 0:
            raise AugmentConfigError(f"--config.{field}.{name}={getattr(params, name)!r}; strengths are >= 0")
    if params.perspective >= 0.5:
        raise AugmentConfigError(f"--config.{field}.perspective={params.perspective!r}; corners move inward by "
                                 "less than half the side: use a value in [0, 0.5)")
    low, high = params.crop_scale
    if not 0.0 < low <= high <= 1.0:
        raise AugmentConfigError(f"--config.{field}.crop_scale={tuple(params.crop_scale)!r}; need 0 < low <= high "
                                 "<= 1 (area fractions)")
    low, high = params.crop_ratio
    if not 0.0 < low <= high:
        raise AugmentConfigError(f"--config.{field}.crop_ratio={tuple(params.crop_ratio)!r}; need 0 < low <= high")


def draw_ops(rng: np.random.Generator, params) -> int:
    """The ops of one retrieved image, each kept with its probability (always 4 draws, whatever the outcome)."""
    draws = rng.uniform(size=len(_PROBS))
    return sum(flag for (name, flag), u in zip(_PROBS, draws) if u < getattr(params, name))


def describe(ops: int) -> str:
    """'P+R+C+J' (perspective, rotation, crop, jitter), 'variant', 'class', or 'none' (the render resized)."""
    return "+".join(short for flag, short, _ in _NAMES if ops & flag) or "none"


def _perspective_coefficients(target: np.ndarray, source: np.ndarray) -> np.ndarray:
    """PIL PERSPECTIVE data (a..h) mapping output corner i (`target`) to input point i (`source`), both [4, 2]."""
    rows = []
    for (x, y), (u, v) in zip(target, source):
        rows.append([x, y, 1, 0, 0, 0, -u * x, -u * y])
        rows.append([0, 0, 0, x, y, 1, -v * x, -v * y])
    return np.linalg.solve(np.asarray(rows, np.float64), source.reshape(8).astype(np.float64))


def warp(image: np.ndarray, rng: np.random.Generator, rotation_deg: float, perspective: float,
         fill: int) -> np.ndarray:
    """A random rotation (up to `rotation_deg`) and perspective distortion (each corner moved inward by up to
    `perspective` of the side, like a photo taken off-axis), composed into one homography: one resampling."""
    h, w = image.shape[:2]
    corners = np.array([[0, 0], [w, 0], [w, h], [0, h]], np.float64)
    inward = np.array([[1, 1], [-1, 1], [-1, -1], [1, -1]], np.float64)
    source = corners + inward * rng.uniform(0, perspective, size=(4, 2)) * np.array([w, h])
    distort = np.append(_perspective_coefficients(corners, source), 1.0).reshape(3, 3)  # output -> distorted frame
    angle = np.deg2rad(rng.uniform(-rotation_deg, rotation_deg))
    cos, sin, cx, cy = np.cos(angle), np.sin(angle), w / 2, h / 2
    rotate = np.array([[cos, -sin, cx - cos * cx + sin * cy], [sin, cos, cy - sin * cx - cos * cy], [0, 0, 1]])
    homography = rotate @ distort  # output pixel -> input pixel, as PIL's PERSPECTIVE data wants
    homography /= homography[2, 2]
    return np.asarray(Image.fromarray(image).transform((w, h), Image.Transform.PERSPECTIVE,
                                                      tuple(homography.reshape(9)[:8]), Image.Resampling.BILINEAR,
                                                      fillcolor=(fill,) * 3))


def random_resized_crop(image: np.ndarray, rng: np.random.Generator, size: int, scale: tuple[float, float],
                        ratio: tuple[float, float] = (3 / 4, 4 / 3)) -> np.ndarray:
    """Crop a random box of area fraction in `scale` and aspect in `ratio`, resize to [size, size] (torchvision's
    recipe with a single draw: the box is clipped to the image instead of retried)."""
    h, w = image.shape[:2]
    area = h * w * rng.uniform(*scale)
    aspect = np.exp(rng.uniform(np.log(ratio[0]), np.log(ratio[1])))
    box_w = int(round(min(np.sqrt(area * aspect), w)))
    box_h = int(round(min(np.sqrt(area / aspect), h)))
    box_w, box_h = max(box_w, 1), max(box_h, 1)
    left, top = int(rng.integers(0, w - box_w + 1)), int(rng.integers(0, h - box_h + 1))
    crop = Image.fromarray(image).crop((left, top, left + box_w, top + box_h))
    return np.asarray(crop.resize((size, size), Image.Resampling.BICUBIC, reducing_gap=2.0))


_LUMA = np.array([0.299, 0.587, 0.114])
_RGB_TO_YIQ = np.array([[0.299, 0.587, 0.114], [0.596, -0.274, -0.322], [0.211, -0.523, 0.312]])


def colour_jitter(image: np.ndarray, rng: np.random.Generator, brightness: float, contrast: float,
                  saturation: float, hue: float) -> np.ndarray:
    """Random brightness, contrast, saturation factors in [1 - x, 1 + x], then a hue rotation of up to `hue` turns.

    Every step is affine in RGB, so they are composed into one 3x3 matrix and offset and applied in one pass.
    """
    x = image.astype(np.float32) / 255.0
    scale = rng.uniform(1 - brightness, 1 + brightness)
    matrix, offset = np.eye(3) * scale, np.zeros(3)
    factor = rng.uniform(1 - contrast, 1 + contrast)  # pivot: mean luma after the brightness change
    matrix, offset = factor * matrix, (1 - factor) * scale * float(np.mean(x @ _LUMA.astype(np.float32))) * np.ones(3)
    factor = rng.uniform(1 - saturation, 1 + saturation)  # blend with the pixel's own luma
    step = factor * np.eye(3) + (1 - factor) * np.outer(np.ones(3), _LUMA)
    matrix, offset = step @ matrix, step @ offset
    theta = rng.uniform(-hue, hue) * 2 * np.pi  # hue = rotation of the chroma plane in YIQ
    chroma = np.array([[1, 0, 0], [0, np.cos(theta), -np.sin(theta)], [0, np.sin(theta), np.cos(theta)]])
    step = np.linalg.inv(_RGB_TO_YIQ) @ chroma @ _RGB_TO_YIQ
    matrix, offset = step @ matrix, step @ offset
    x = x @ matrix.T.astype(np.float32) + offset.astype(np.float32)
    return np.clip(np.round(x * 255.0), 0, 255).astype(np.uint8)


def resize(image: np.ndarray, size: int) -> np.ndarray:
    """The whole image to [size, size] (what a retrieval gets when its crop is not drawn)."""
    if image.shape[:2] == (size, size):
        return image
    return np.asarray(Image.fromarray(image).resize((size, size), Image.Resampling.BICUBIC, reducing_gap=2.0))


def simulate_retrieval(image: np.ndarray, rng: np.random.Generator, *, size: int, params,
                       background: int, ops: int = ALL_OPS) -> np.ndarray:
    """One simulated retrieved image [size, size, 3] from a render; `params` is cfg.mode_3d.augment, `ops` the
    flags of the ops to apply (draw_ops). Ops that are off draw nothing, so their strengths cannot matter."""
    rotation = params.rotation_deg if ops & ROTATION else 0.0
    perspective = params.perspective if ops & PERSPECTIVE else 0.0
    if rotation or perspective:
        image = warp(image, rng, rotation, perspective, background)
    if ops & CROP:
        image = random_resized_crop(image, rng, size, tuple(params.crop_scale), tuple(params.crop_ratio))
    else:
        image = resize(image, size)
    if ops & JITTER:
        image = colour_jitter(image, rng, params.brightness, params.contrast, params.saturation, params.hue)
    return image
