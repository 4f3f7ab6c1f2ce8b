"""`mv_renders`: user-supplied multiview renders (e.g. the paper's ~65K filtered Objaverse objects), 3D mode.

Layout of `manual_dir` (one folder per object; folder name = object id):

    <manual_dir>/<object_id>/cameras.json   {"views": [{"file": "000.png", "elevation": 15.0, "azimuth": 0.0}, ...]}
    <manual_dir>/<object_id>/caption.txt    one line, e.g. "a wooden chair with curved armrests"
    <manual_dir>/<object_id>/000.png ...    square RGB or RGBA renders of any size
    <manual_dir>/<object_id>/variants/*.png optional: semantic variants of the object (any size, RGB or RGBA), e.g.
                                            written by `mvrag data variants` (data_pipelines/variants.py)

Render with a transparent background (RGBA): the alpha is kept, and the loader composites every view over a grey
drawn per object (configs/data.py `background`, paper C.1); RGB renders keep the background they were rendered on.
Variants are mixed into the simulated retrievals with probability `mode_3d.variant_prob`.

Angles are degrees in `mvrag_jax.inputs.camera.get_camera`'s convention: elevation > 0 puts the camera above the object,
azimuth 0 is the camera on the -y side (Blender axes) and grows counter-clockwise seen from above; cameras look at
the origin from radius 1 (render with the object centred and scaled to fit, as the synthetic set is).
Each object needs at least one orbit (num_views views at one elevation whose azimuths are a0 + i * 360 / num_views,
both within 0.5 degrees) at an elevation inside `mode_3d.elevation_range` (paper C.1: [-5, 30]; orbits outside it
are not stored, and the loader draws the target orbit among those stored), and `min_extra_views` other views, from
which the loader simulates the retrieved images. So render, per object, at least one such orbit (MVDream-style:
4 orthogonal views at an elevation drawn from the range) plus 2-3 views from other directions.
Objects that break any rule are skipped with the reason in the log and in the dataset's metadata.json ("skipped").
"""

import dataclasses
import json
import math

import ml_collections as mlc
import numpy as np
import tensorflow_datasets as tfds
from etils import epath
from PIL import Image

from data_pipelines import records
from mvrag_jax.errors import MvragError

ANGLE_TOLERANCE_DEG = 0.5


class BadObjectError(MvragError, ValueError):
    pass


@dataclasses.dataclass(eq=False)
class MvRendersConfig(tfds.core.BuilderConfig):
    image_size: int = 256
    num_views: int = 4
    min_extra_views: int = 1
    elevation_range: tuple = (-5.0, 30.0)


def find_orbits(elevation: np.ndarray, azimuth: np.ndarray, num_views: int,
                tolerance: float = ANGLE_TOLERANCE_DEG) -> np.ndarray:
    """Disjoint orbits [S, num_views] of view indices: same elevation, azimuths a0 + i * 360 / num_views."""
    used, orbits = set(), []
    for start in range(len(azimuth)):
        if start in used:
            continue
        members = [start]
        for i in range(1, num_views):
            wanted = (azimuth[start] + i * 360.0 / num_views) % 360.0
            gaps = {m: abs((azimuth[m] - wanted + 180.0) % 360.0 - 180.0) for m in range(len(azimuth))
                    if m not in used and m not in members and abs(elevation[m] - elevation[start]) <= tolerance}
            gaps = {m: gap for m, gap in gaps.items() if gap <= tolerance}
            if not gaps:
                break
            members.append(min(gaps, key=gaps.get))
        if len(members) == num_views:
            orbits.append(members)
            used.update(members)
    return np.asarray(orbits, np.int32).reshape(-1, num_views)


def _has_alpha(image: Image.Image) -> bool:
    return image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info)


def _view_bytes(path: epath.Path, image_size: int, square: bool = True) -> bytes:
    """PNG bytes of a validated [square] view at image_size, RGBA if the file has alpha (kept for the loader's
    background), else RGB; files already in that form are stored as they are."""
    try:
        with Image.open(path) as image:
            image.load()
            alpha = _has_alpha(image)
            as_is = image.mode in ("RGB", "RGBA") and image.size == (image_size, image_size) and image.format == "PNG"
            image = image.convert("RGBA" if alpha else "RGB")
    except records.DECODE_ERRORS as e:
        raise BadObjectError(f"{path.name} is not a readable image ({type(e).__name__}: {e})") from e
    w, h = image.size
    if square and w != h:
        raise BadObjectError(f"view {path.name} is {w}x{h}; renders must be square")
    if as_is:
        return path.read_bytes()
    side = min(w, h)
    image = image.crop(((w - side) // 2, (h - side) // 2, (w - side) // 2 + side, (h - side) // 2 + side))
    if alpha:  # resample premultiplied, so transparent pixels' colours do not bleed into the edges
        image = image.convert("RGBa").resize((image_size, image_size), Image.Resampling.BICUBIC,
                                             reducing_gap=2.0).convert("RGBA")
    else:
        image = image.resize((image_size, image_size), Image.Resampling.BICUBIC, reducing_gap=2.0)
    return records.encode_png(np.asarray(image))


def _number(view: dict, key: str, index: int) -> float:
    value = view.get(key)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise BadObjectError(f"cameras.json view {index} has {key}={value!r}; expected a finite number of degrees")
    return float(value)


def load_object(folder: epath.Path, config: MvRendersConfig) -> dict:
    """One validated record, or BadObjectError naming what is wrong."""
    try:
        cameras = json.loads((folder / "cameras.json").read_text())
        caption = (folder / "caption.txt").read_text().strip()
    except FileNotFoundError as e:
        raise BadObjectError(f"missing {epath.Path(e.filename).name}") from e
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise BadObjectError(f"unreadable cameras.json or caption.txt ({e})") from e
    if not caption:
        raise BadObjectError("caption.txt is empty")
    views = cameras.get("views") if isinstance(cameras, dict) else None
    if not isinstance(views, list) or not all(isinstance(v, dict) for v in views):
        raise BadObjectError('cameras.json needs {"views": [{"file": ..., "elevation": ..., "azimuth": ...}, ...]}')
    elevation = np.array([_number(v, "elevation", i) for i, v in enumerate(views)], np.float32)
    azimuth = np.array([_number(v, "azimuth", i) % 360.0 for i, v in enumerate(views)], np.float32)
    if np.any(np.abs(elevation) > 90):
        raise BadObjectError(f"elevations {elevation[np.abs(elevation) > 90].tolist()} are outside [-90, 90]")
    orbits = find_orbits(elevation, azimuth, config.num_views)
    if len(orbits) == 0:
        raise BadObjectError(f"no {config.num_views} views at one elevation with azimuths "
                             f"{360 // config.num_views} degrees apart (within {ANGLE_TOLERANCE_DEG} degrees)")
    low, high = config.elevation_range
    inside = (elevation[orbits[:, 0]] >= low - ANGLE_TOLERANCE_DEG) & (elevation[orbits[:, 0]] <= high +
                                                                       ANGLE_TOLERANCE_DEG)
    if not inside.any():
        raise BadObjectError(f"orbits at elevations {sorted(set(elevation[orbits[:, 0]].tolist()))}, none inside "
                             f"mode_3d.elevation_range [{low}, {high}]; render an orbit inside it or widen the range")
    orbits = orbits[inside]
    extra = len(views) - config.num_views
    if extra < config.min_extra_views:
        raise BadObjectError(f"{extra} views outside one orbit; need {config.min_extra_views} to simulate retrievals")
    files = []
    for i, view in enumerate(views):
        if not isinstance(view.get("file"), str) or not (folder / view["file"]).is_file():
            raise BadObjectError(f"cameras.json view {i} names file {view.get('file')!r}, which does not exist")
        files.append(_view_bytes(folder / view["file"], config.image_size))
    variants = []
    if (folder / "variants").is_dir():
        variants = [_view_bytes(path, config.image_size, square=False) for path in records.image_files(
            folder / "variants")]
    return {"object_id": folder.name, "caption": caption, "views": files, "elevation": elevation,
            "azimuth": azimuth, "orbits": orbits, "variants": records.image_bytes_list(variants)}


class MvRenders(tfds.core.GeneratorBasedBuilder, skip_registration=True):
    """Multiview renders from manual_dir; see the module docstring for the layout."""

    VERSION = tfds.core.Version("2.0.0")
    RELEASE_NOTES = {"1.0.0": "Initial release.", "2.0.0": "Alpha kept (RGBA views), orbits inside "
                     "elevation_range only, semantic variants from variants/."}
    BUILDER_CONFIGS = [MvRendersConfig(name="default")]
    MANUAL_DOWNLOAD_INSTRUCTIONS = __doc__
    url_infos = None  # nothing is downloaded; skips tfds' checksum lookup, which breaks on namespace packages

    def _info(self) -> tfds.core.DatasetInfo:
        return tfds.core.DatasetInfo(builder=self, description=self.builder_config.description,
                                     features=records.multiview_features(), metadata=tfds.core.MetadataDict())

    def _split_generators(self, dl_manager):
        return {"train": self._generate_examples(epath.Path(dl_manager.manual_dir))}

    def _generate_examples(self, root: epath.Path):
        skipped = self.info.metadata.setdefault("skipped", [])
        kept = 0
        for folder in sorted(p for p in root.iterdir() if p.is_dir()):
            try:
                record = load_object(folder, self.builder_config)
            except BadObjectError as e:
                records.report_skipped(skipped, folder.name, str(e))
                continue
            kept += 1
            yield folder.name, record
        if kept == 0:
            raise BadObjectError(f"no valid object folders in {root} ({len(skipped)} skipped, reasons in the log); "
                                 "see data_pipelines/mv_renders.py for the layout")


def make_builder(cfg: mlc.ConfigDict, data_dir: str) -> MvRenders:
    params = dict(image_size=cfg.image_size, num_views=cfg.num_views, min_extra_views=cfg.mv_renders.min_extra_views,
                  elevation_range=records.elevation_range(cfg))
    name = f"{cfg.image_size}px_v{cfg.num_views}_{records.config_digest(params)}"
    return MvRenders(data_dir=data_dir, config=MvRendersConfig(name=name, description=f"mv_renders {params}",
                                                               **params))
