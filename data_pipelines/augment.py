"""Image augmentations, each a pure function of (image, rng, parameters) -> new uint8 image.

3D mode simulates "retrieved" images from extra renders of the same object (the paper's recipe: perspective
distortion, rotation, random resized crop, colour jitter), so the model learns to use references that are not
aligned views. Geometric ops fill uncovered pixels with the render background, so no black corners leak in.
"""

import numpy as np
from PIL import Image


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


def simulate_retrieval(image: np.ndarray, rng: np.random.Generator, *, size: int, params,
                       background: int) -> np.ndarray:
    """One simulated retrieved image [size, size, 3] from a render; `params` is cfg.mode_3d.augment."""
    image = warp(image, rng, params.rotation_deg, params.perspective, background)
    image = random_resized_crop(image, rng, size, tuple(params.crop_scale), tuple(params.crop_ratio))
    return colour_jitter(image, rng, params.brightness, params.contrast, params.saturation, params.hue)
