"""Which synthetic shape, in which colour, a set of generated views shows: the demo's scorer.

Colour: the rule of colour.py (mean colour of the pixels that differ from the background, nearest palette colour by
RGB direction). Shape: the nearest rendered template. Every shape of `data_pipelines/shapes.py` is rendered from the
views' cameras (elevation, azimuths 0, 90, 180, 270 as `mvrag generate` uses them) at a grid of yaws and the
training scales, as a shading map in the detected colour on the detected background; the shape whose best template
is closest (mean absolute difference over all views, after average pooling by `pool` so the comparison happens at
the latent resolution) wins. One yaw serves all views of an object, so views that disagree about the object score
worse than consistent ones. Each view's background is the median of its 1-pixel border (renders and generated
views both have the object in the middle; generated views' backgrounds drift apart in tint).

    scorer = ShapeScorer(image_size=32)
    colour, shape = scorer.classify(views)          # uint8 [views, 32, 32, 3]
"""

import dataclasses
import functools
from typing import Sequence

import numpy as np

from configs.data import DEMO_COLOURS, DEMO_SHAPES
from data_pipelines import raster, shapes
from mvrag_jax.inputs.camera import get_camera
from mvrag_jax.demo.colour import MIN_OBJECT_FRACTION, OBJECT_THRESHOLD

DEFAULT_PALETTE = DEMO_COLOURS
DEFAULT_SHAPES = DEMO_SHAPES
SCALES = (0.4, 0.475, 0.55)   # configs/data.py synthetic.scale_range (0.4, 0.55), ends and middle
YAW_STEP_DEG = 15.0
# Yaw periods of the shapes' geometry (a cube repeats every 90 degrees, the 24-gon prisms and the sphere are
# treated as round): fewer templates, the same answers.
_YAW_PERIOD = {"cube": 90.0, "sphere": 0.0, "cylinder": 0.0, "cone": 0.0, "torus": 180.0, "pyramid": 360.0,
               "wedge": 360.0}
_GREY = 0.5                   # albedo of the shading templates (no clipping: shading <= 1.2)


class ScoreError(ValueError):
    """Views the scorer cannot read (shape, size)."""


@dataclasses.dataclass(frozen=True)
class Classification:
    colour: str | None          # None: no object pixels (nothing drawn)
    shape: str
    distances: dict[str, float]  # per shape: mean |views - best template| in [0, 1] units


def border_background(views: np.ndarray) -> np.ndarray:
    """[views, 3] float: the median colour of each view's 1-pixel border."""
    views = np.asarray(views, np.float32)
    border = np.concatenate([views[:, 0], views[:, -1], views[:, :, 0], views[:, :, -1]], axis=1)  # [n, 4s, 3]
    return np.median(border, axis=1)


def _pool(x: np.ndarray, factor: int) -> np.ndarray:
    """Average pooling of [..., s, s, c] by `factor`."""
    if factor == 1:
        return x
    *lead, s, _, c = x.shape
    return x.reshape(*lead, s // factor, factor, s // factor, factor, c).mean(axis=(-4, -2))


@functools.lru_cache(maxsize=8)
def _templates(image_size: int, elevation: float, num_views: int, shape_names: tuple[str, ...]
               ) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """shape -> (shading [t, views, s, s, 1] in albedo units, coverage mask [t, views, s, s, 1]) over the template
    grid of yaws x SCALES, rendered with the camera `mvrag generate` gives view i (azimuth i * 360 / views)."""
    cameras = get_camera(num_views, elevation=elevation, azimuth_start=0.0)
    out = {}
    for shape in shape_names:
        period = _YAW_PERIOD[shape]
        yaws = [0.0] if period == 0 else list(np.arange(0.0, period, YAW_STEP_DEG))
        shading, masks = [], []
        for scale in SCALES:
            for yaw in yaws:
                mesh = shapes.make_mesh(shape, "white", scale=scale, yaw_deg=yaw)
                mesh = dataclasses.replace(mesh, colour=(_GREY,) * 3)
                views = np.stack([raster.render(mesh, camera, size=image_size, background=0, supersample=1)
                                  for camera in cameras]).astype(np.float32)[..., :1] / 255.0
                masks.append(views > 0)  # ambient light keeps every object pixel above 0
                shading.append(views / _GREY)
        out[shape] = (np.stack(shading), np.stack(masks).astype(np.float32))
    return out


def object_colour(views: np.ndarray, background: np.ndarray, palette: Sequence[str]) -> str | None:
    """colour.py's rule with a background per view ([views, 1, 1, 3]): the palette colour closest in RGB direction to
    the mean of the pixels that differ from their view's background; None when (almost) nothing differs."""
    pixels = np.asarray(views, np.float32)
    is_object = np.abs(pixels - background).sum(axis=-1) > OBJECT_THRESHOLD
    if is_object.mean() < MIN_OBJECT_FRACTION:
        return None
    mean = pixels[is_object].mean(axis=0)
    unit = lambda v: np.asarray(v, np.float32) / max(float(np.linalg.norm(v)), 1e-6)
    return max(palette, key=lambda name: float(unit(mean) @ unit(shapes.colour_rgb(name))))


class ShapeScorer:
    """Classifies uint8 views [views, s, s, 3] as (colour, shape); see the module docstring."""

    def __init__(self, image_size: int = 32, elevation: float = 15.0, num_views: int = 4, pool: int = 2,
                 palette: Sequence[str] = DEFAULT_PALETTE, shape_names: Sequence[str] = DEFAULT_SHAPES):
        if image_size % pool:
            raise ScoreError(f"image_size={image_size} is not a multiple of pool={pool}")
        self.image_size, self.elevation, self.num_views, self.pool = image_size, elevation, num_views, pool
        self.palette, self.shape_names = tuple(palette), tuple(shape_names)
        unknown = sorted(set(self.shape_names) - set(shapes.SHAPE_NAMES))
        if unknown:
            raise ScoreError(f"shapes {unknown} are not in data_pipelines/shapes.py SHAPE_NAMES {shapes.SHAPE_NAMES}")

    def classify(self, views: np.ndarray) -> Classification:
        views = np.asarray(views)
        expected = (self.num_views, self.image_size, self.image_size, 3)
        if views.shape != expected:
            raise ScoreError(f"views have shape {views.shape}; the scorer was built for {expected} (views, side, "
                             "side, RGB): pass image_size/num_views of the generated views")
        background = border_background(views)[:, None, None, :]  # [views, 1, 1, 3]: each view its own
        colour = object_colour(views, background, self.palette)
        albedo = np.asarray(shapes.colour_rgb(colour or self.palette[0]), np.float32)
        target = _pool(views.astype(np.float32) / 255.0, self.pool)[None]  # [1, views, s', s', 3]
        distances = {}
        for shape, (shading, mask) in _templates(self.image_size, float(self.elevation), self.num_views,
                                                    self.shape_names).items():
            template = np.clip(mask * shading * albedo + (1.0 - mask) * background[None] / 255.0, 0.0, 1.0)
            error = np.abs(_pool(template, self.pool) - target).mean(axis=(1, 2, 3, 4))  # [t]
            distances[shape] = float(error.min())
        return Classification(colour, min(distances, key=distances.get), distances)
