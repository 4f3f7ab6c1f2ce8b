"""What every builder stores and how images go in and out of records.

Images are stored as encoded PNG/JPEG bytes (`tfds.features.Tensor(dtype=object)`), not `tfds.features.Image`:
tfds can only encode numpy images with TensorFlow, and it decodes all images of a record inside the data source,
where one undecodable image would crash the loader. We decode in the grain transform instead, only the images a
transform needs, and an undecodable image there is a skipped record (see `loader.py`).

Record schemas (all text fields come back from the data source as bytes):
    multiview: object_id, caption, views [V] bytes (RGBA: alpha composited over a grey by the loader; or RGB),
               elevation [V] deg (> 0: camera above, as get_camera), azimuth [V] deg (get_camera's convention),
               orbits [S, F] int32 (indices of F evenly spaced views at one elevation inside the config's
               elevation range; any orbit can be a training target, every other view feeds the simulated
               retrieval), variants [W] bytes (semantic variants of the object, W may be 0)
    classes:   image_id, image bytes, label int32, class_name; records are stored grouped by class in label order
               (disable_shuffling), and `metadata["class_counts"][split]` gives the group sizes
    ood_eval:  prompt_id, prompt, retrieved [R] bytes, reference [Q] bytes (Q may be 0)
"""

import io
import struct
import zlib

import numpy as np
import tensorflow_datasets as tfds
from absl import logging
from PIL import Image

from mvrag_jax.errors import MvragError

# Everything PIL raises for damaged or non-image bytes (PNG chunk errors surface as SyntaxError).
DECODE_ERRORS = (OSError, ValueError, SyntaxError, EOFError, zlib.error, struct.error, Image.DecompressionBombError)
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp")


def image_list() -> tfds.features.Tensor:
    return tfds.features.Tensor(shape=(None,), dtype=np.object_)


def multiview_features() -> tfds.features.FeaturesDict:
    return tfds.features.FeaturesDict({
        "object_id": tfds.features.Text(),
        "caption": tfds.features.Text(),
        "views": image_list(),
        "elevation": tfds.features.Tensor(shape=(None,), dtype=np.float32),
        "azimuth": tfds.features.Tensor(shape=(None,), dtype=np.float32),
        "orbits": tfds.features.Tensor(shape=(None, None), dtype=np.int32, encoding=tfds.features.Encoding.BYTES),
        "variants": image_list(),
    })


def class_features() -> tfds.features.FeaturesDict:
    return tfds.features.FeaturesDict({
        "image_id": tfds.features.Text(),
        "image": tfds.features.Tensor(shape=(), dtype=np.object_),
        "label": tfds.features.Tensor(shape=(), dtype=np.int32),
        "class_name": tfds.features.Text(),
    })


class ElevationRangeError(MvragError, ValueError):
    pass


def elevation_range(cfg) -> tuple[float, float]:
    """cfg.mode_3d.elevation_range as (low, high) degrees, checked: -90 <= low <= high <= 90."""
    value = tuple(cfg.mode_3d.elevation_range)
    if len(value) != 2 or not -90.0 <= value[0] <= value[1] <= 90.0:
        raise ElevationRangeError(f"--config.mode_3d.elevation_range={value!r}; give (low, high) degrees with "
                                  "-90 <= low <= high <= 90, e.g. (-5, 30) (paper C.1)")
    return float(value[0]), float(value[1])


def image_bytes_list(items: list) -> np.ndarray:
    """A list of encoded images as the object array an `image_list` feature takes (also when empty)."""
    out = np.empty(len(items), dtype=np.object_)
    out[:] = list(items)
    return out


def encode_png(image: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="png")
    return buffer.getvalue()


def to_rgb(image: Image.Image, background: int) -> np.ndarray:
    """uint8 [h, w, 3]; transparent pixels (RGBA renders) are composited over the flat grey background."""
    if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        canvas = Image.new("RGBA", rgba.size, (background, background, background, 255))
        return np.asarray(Image.alpha_composite(canvas, rgba).convert("RGB"))
    return np.asarray(image.convert("RGB"))


def decode_image(data: bytes, background: int = 127) -> np.ndarray:
    """Encoded bytes -> uint8 [h, w, 3]. Raises one of DECODE_ERRORS for damaged bytes."""
    with Image.open(io.BytesIO(data)) as image:
        image.load()
        return to_rgb(image, background)


def decode_mask(data: bytes) -> np.ndarray:
    """An object mask's encoded bytes -> float32 [h, w] in [0, 1] (1: object). A mask with an alpha channel is its
    alpha (a cut-out saved as RGBA); otherwise its luminance (white object on black, as Grounded-SAM writes them)."""
    with Image.open(io.BytesIO(data)) as image:
        image.load()
        if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
            return np.asarray(image.convert("RGBA"), np.float32)[..., 3] / 255.0
        return np.asarray(image.convert("L"), np.float32) / 255.0


def segment(image: np.ndarray, mask: np.ndarray, background: int) -> np.ndarray:
    """uint8 [h, w, 3] image cut out by mask [h, w] in [0, 1] onto the flat grey background (soft edges blend)."""
    m = mask[..., None]
    return np.clip(np.rint(image.astype(np.float32) * m + background * (1.0 - m)), 0, 255).astype(np.uint8)


def resize_square(image: np.ndarray, size: int) -> np.ndarray:
    """Centre-crop to a square, then resize to [size, size, 3] (no-op when already that size)."""
    h, w = image.shape[:2]
    if h == w == size:
        return image
    side = min(h, w)
    top, left = (h - side) // 2, (w - side) // 2
    square = Image.fromarray(image[top:top + side, left:left + side])
    return np.asarray(square.resize((size, size), Image.Resampling.BICUBIC, reducing_gap=2.0))


def as_text(value) -> str:
    return value.decode("utf-8") if isinstance(value, bytes) else str(value)


def config_digest(params: dict) -> str:
    """8 hex digits that change with any build parameter: builder config names carry it, so datasets built with
    different parameters never share a directory."""
    return f"{zlib.crc32(repr(sorted(params.items())).encode()):08x}"


def report_skipped(skipped: list, item: str, reason: str) -> None:
    """Bad inputs never stop a build: log, and keep a list that the builder saves in its metadata.json."""
    logging.warning("skipping %s: %s", item, reason)
    skipped.append({"item": item, "reason": reason})


def image_files(folder) -> list:
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
