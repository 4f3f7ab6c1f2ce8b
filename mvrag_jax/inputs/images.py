"""Host-side preprocessing of retrieved images for the CLIP vision tower, as the official MV-RAG pipeline does it.

    retrieved image -> pad_to_square -> torchvision v2.Resize(256) -> CLIPImageProcessor (PIL backend)

Images are uint8 arrays [h, w, c] (c = 3 RGB, 4 RGBA or none for grayscale) standing for the PIL images the
official code passes around; resampling goes through Pillow itself so the filters are the official ones bit for bit:
v2.Resize on a PIL image is `Image.resize(BILINEAR)` (PIL always antialiases), and CLIPImageProcessorPil resizes
with PIL bicubic, center-crops with offsets (size - crop) // 2, rescales in float64 and normalises in float32.
Outputs are NHWC float32 (our models are NHWC); the reference fixtures are NCHW.
"""

import dataclasses
from typing import Any, Sequence

import numpy as np
from PIL import Image

from mvrag_jax.inputs.release import Release
from mvrag_jax.errors import MvragError


PIPELINE_RESIZE = 256  # the pipeline's `v2.Resize(size=256)` after pad_to_square
OPENAI_CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
PREPROCESSOR_FILE = "preprocessor_config.json"


class ImageError(MvragError, ValueError):
    """An image or an image-processor config that the official preprocessing would not accept."""


def as_uint8_image(image: Any) -> np.ndarray:
    """A PIL image or uint8 array -> uint8 array [h, w] or [h, w, c] with c in (1, 3, 4)."""
    array = np.asarray(image)
    if array.dtype != np.uint8:
        raise ImageError(f"images must be uint8 (0..255) like decoded image files, got dtype {array.dtype}; "
                         "convert floats in [0, 1] with (x * 255).round().astype(np.uint8)")
    if array.ndim == 3 and array.shape[-1] == 1:
        array = array[..., 0]
    if array.ndim not in (2, 3) or (array.ndim == 3 and array.shape[-1] not in (3, 4)):
        raise ImageError(f"image shape {array.shape} is not [h, w], [h, w, 3] or [h, w, 4] (HWC); "
                         "transpose CHW images to HWC")
    return array


def shortest_edge_size(height: int, width: int, size: int) -> tuple[int, int]:
    """(h, w) with the shorter side = size and the longer int(size * long / short), the rule torchvision's
    Resize(int) and transformers' `shortest_edge` share."""
    short, long = (width, height) if width <= height else (height, width)
    new_long = int(size * long / short)
    return (new_long, size) if width <= height else (size, new_long)


def pil_resize(image: np.ndarray, height: int, width: int, resample: Image.Resampling) -> np.ndarray:
    """Resize through Pillow (same mode, same filter, no reducing_gap), as both official resizes do."""
    return np.asarray(Image.fromarray(image).resize((width, height), resample=resample))


def pad_to_square(image: Any) -> np.ndarray:
    """Zero-pad to [m, m, c], m = max(h, w): left/top get (m - w) // 2 / (m - h) // 2, right/bottom the rest."""
    image = as_uint8_image(image)
    h, w = image.shape[:2]
    m = max(h, w)
    pad = [((m - h) // 2, (m - h + 1) // 2), ((m - w) // 2, (m - w + 1) // 2)] + [(0, 0)] * (image.ndim - 2)
    return np.pad(image, pad, mode="constant", constant_values=0)


def pipeline_transform(image: Any, size: int = PIPELINE_RESIZE) -> np.ndarray:
    """The pipeline's `transform`: pad_to_square, then the shorter side to `size`, PIL bilinear -> [size, size, c]."""
    square = pad_to_square(image)
    height, width = shortest_edge_size(*square.shape[:2], size)
    return pil_resize(square, height, width, Image.Resampling.BILINEAR)


def to_rgb(image: Any) -> np.ndarray:
    """transformers' convert_to_rgb for PIL images: transparency is composited onto WHITE, grayscale is replicated."""
    pil = Image.fromarray(as_uint8_image(image))
    if "A" in pil.getbands():
        background = Image.new("RGBA", pil.size, (255, 255, 255, 255))
        return np.asarray(Image.alpha_composite(background, pil.convert("RGBA")).convert("RGB"))
    return np.asarray(pil.convert("RGB"))


def _size_dict(value: Any, square_if_int: bool) -> dict[str, int]:
    """transformers' get_size_dict: an int is a shortest edge (size) or a square (crop_size)."""
    if isinstance(value, int):
        return {"height": value, "width": value} if square_if_int else {"shortest_edge": value}
    return dict(value)


@dataclasses.dataclass(frozen=True)
class CLIPImageProcessorConfig:
    """CLIPImageProcessor settings (feature_extractor/preprocessor_config.json; defaults = transformers' defaults)."""

    shortest_edge: int | None = 224          # resize the shorter side to this ...
    resize_hw: tuple[int, int] | None = None  # ... or to exactly (height, width) when the config says so
    crop_hw: tuple[int, int] = (224, 224)
    resample: int = int(Image.Resampling.BICUBIC)
    do_resize: bool = True
    do_center_crop: bool = True
    do_rescale: bool = True
    rescale_factor: float = 1 / 255
    do_normalize: bool = True
    image_mean: tuple[float, float, float] = OPENAI_CLIP_MEAN
    image_std: tuple[float, float, float] = OPENAI_CLIP_STD
    do_convert_rgb: bool = True

    def __post_init__(self):
        if self.do_resize and (self.shortest_edge is None) == (self.resize_hw is None):
            raise ImageError("CLIPImageProcessorConfig needs exactly one of shortest_edge or resize_hw, got "
                             f"{self.shortest_edge} and {self.resize_hw}; fix `size` in {PREPROCESSOR_FILE}")

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> "CLIPImageProcessorConfig":
        """From the contents of a preprocessor_config.json."""
        fields: dict[str, Any] = {}
        if "size" in values:
            size = _size_dict(values["size"], square_if_int=False)
            if "shortest_edge" in size:
                fields["shortest_edge"] = int(size["shortest_edge"])
            elif "height" in size and "width" in size:
                fields.update(shortest_edge=None, resize_hw=(int(size["height"]), int(size["width"])))
            else:
                raise ImageError(f"{PREPROCESSOR_FILE}: size={values['size']} has neither shortest_edge nor "
                                 "height/width; use {\"shortest_edge\": N} as the official CLIP processor does")
        if "crop_size" in values:
            crop = _size_dict(values["crop_size"], square_if_int=True)
            fields["crop_hw"] = (int(crop["height"]), int(crop["width"]))
        for name in ("resample", "do_resize", "do_center_crop", "do_rescale", "rescale_factor", "do_normalize",
                     "do_convert_rgb"):
            if name in values:
                fields[name] = type(getattr(cls, name))(values[name])
        for name in ("image_mean", "image_std"):
            if name in values:
                stat = values[name]
                fields[name] = tuple(float(x) for x in (stat if isinstance(stat, (list, tuple)) else [stat] * 3))
        return cls(**fields)

    @classmethod
    def from_release(cls, release: "Release") -> "CLIPImageProcessorConfig":
        values = release.config("feature_extractor", PREPROCESSOR_FILE)
        if values is None:
            raise ImageError(f"{release.folder('feature_extractor')} has no {PREPROCESSOR_FILE}; copy it from the "
                             "official release (it sets the CLIP resize, crop, mean and std)")
        return cls.from_dict(values)


def center_crop(image: np.ndarray, height: int, width: int) -> np.ndarray:
    """transformers' center_crop: offsets (size - crop) // 2; an image smaller than the crop is zero-padded with
    ceil((crop - size) / 2) before it."""
    h, w = image.shape[:2]
    top, left = (h - height) // 2, (w - width) // 2
    if top >= 0 and left >= 0:
        return image[top:top + height, left:left + width]
    canvas = np.zeros((max(height, h), max(width, w)) + image.shape[2:], image.dtype)
    pad_top, pad_left = -(-(canvas.shape[0] - h) // 2), -(-(canvas.shape[1] - w) // 2)
    canvas[pad_top:pad_top + h, pad_left:pad_left + w] = image
    return center_crop(canvas, height, width)


def rescale_normalize(array: np.ndarray, config: CLIPImageProcessorConfig) -> np.ndarray:
    """uint8 RGB [..., 3] -> float32 pixel values: rescale, then normalise, in transformers' arithmetic."""
    pixels = array.astype(np.float32)
    if config.do_rescale:  # float64 product, then float32: transformers' rescale
        pixels = (array.astype(np.float64) * config.rescale_factor).astype(np.float32)
    if config.do_normalize:  # float32 arithmetic with float32 statistics, as transformers' normalize
        pixels = (pixels - np.asarray(config.image_mean, np.float32)) / np.asarray(config.image_std, np.float32)
    return pixels


def clip_preprocess(images: Sequence[Any], config: CLIPImageProcessorConfig) -> np.ndarray:
    """CLIPImageProcessorPil on uint8 images -> normalised pixel values [n, crop_h, crop_w, 3] float32 (NHWC)."""
    processed = []
    for image in images:
        array = to_rgb(image) if config.do_convert_rgb else as_uint8_image(image)
        if config.do_resize:
            height, width = (shortest_edge_size(*array.shape[:2], config.shortest_edge)
                             if config.shortest_edge is not None else config.resize_hw)
            array = pil_resize(array, height, width, Image.Resampling(config.resample))
        if config.do_center_crop:
            array = center_crop(array, *config.crop_hw)
        processed.append(rescale_normalize(array, config))
    shapes = {p.shape for p in processed}
    if len(shapes) > 1:
        raise ImageError(f"preprocessed images have different shapes {sorted(shapes)}; enable do_center_crop or "
                         "resize to a fixed height/width so they can be batched")
    return np.stack(processed)  # [n, h, w, 3]


def retrieved_pixel_values(images: Sequence[Any], config: CLIPImageProcessorConfig) -> np.ndarray:
    """The pipeline's `encode_images` preprocessing of retrieved images: [k, s, s, 3] float32 NHWC."""
    return clip_preprocess([pipeline_transform(image) for image in images], config)


def negative_pixel_values(pixel_values: np.ndarray) -> np.ndarray:
    """The "no image" input of classifier-free guidance: zeros in NORMALISED pixel space (not black images)."""
    return np.zeros_like(pixel_values)
