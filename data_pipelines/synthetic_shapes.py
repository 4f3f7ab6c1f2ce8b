"""`synthetic_shapes`: the embedded default dataset, rendered procedurally with no download.

Classes are (colour, shape) pairs such as "red cube". Two builder configs (tfds splits of one builder must share one
schema, and the two halves have different ones):
- `multiview` (3D mode): per object, `num_views` evenly spaced views at one elevation drawn uniformly from
  `mode_3d.elevation_range` (paper C.1: [-5, 30] degrees) plus `extra_views` renders from random azimuths at
  elevations from the same range (the raw material of the simulated retrievals). Every view is rendered from exactly
  the camera `mvrag_jax.inputs.camera.get_camera(1, elevation, azimuth)` returns for its stored angles, as RGBA with the
  pixel coverage as alpha: the loader composites it over the object's grey (data_pipelines/background.py).
  Captions are "a red cube".
- `classes` (2D mode): single renders of each class from random viewpoints, sizes, offsets and background tints,
  stored grouped by class (see records.py).
Everything is a pure function of the config (its seed included), so a dataset can be rebuilt bit-exactly.

    builder = synthetic_shapes.make_builder(configs.data.get_config("size=tiny"), "multiview", data_dir)
    builder.download_and_prepare(file_format="array_record")
"""

import dataclasses

import ml_collections as mlc
import numpy as np
import tensorflow_datasets as tfds

from data_pipelines import raster, records, shapes
from mvrag_jax.inputs.camera import get_camera
from mvrag_jax.errors import UsageError

KINDS = ("multiview", "classes")
SPLITS = ("train", "validation")


@dataclasses.dataclass(eq=False)
class SyntheticShapesConfig(tfds.core.BuilderConfig):
    kind: str = "multiview"
    image_size: int = 256
    num_views: int = 4
    extra_views: int = 3
    shape_names: tuple = shapes.SHAPE_NAMES
    colour_names: tuple = tuple(name for name, _ in shapes.COLOURS)
    train_per_class: int = 20        # objects (multiview) or images (classes) per class
    validation_per_class: int = 2
    elevation_range: tuple = (-5.0, 30.0)
    scale_range: tuple = (0.4, 0.55)
    fov_deg: float = 50.0
    supersample: int = 2
    seed: int = 0


def article(word: str) -> str:
    return "an" if word[:1].lower() in "aeiou" else "a"


def class_list(config: SyntheticShapesConfig) -> list[tuple[str, str]]:
    """(colour, shape) per label, in label order."""
    return [(colour, shape) for shape in config.shape_names for colour in config.colour_names]


def make_config(cfg: mlc.ConfigDict, kind: str) -> SyntheticShapesConfig:
    """Builder config from the data config (configs/data.py); the name encodes every parameter, so two configs that
    render differently never share a directory."""
    if kind not in KINDS:
        raise UsageError(f"synthetic_shapes kind {kind!r} is not one of {KINDS}")
    syn = cfg.synthetic
    params = dict(kind=kind, image_size=cfg.image_size, num_views=cfg.num_views, extra_views=syn.extra_views,
                  shape_names=tuple(syn.shapes), colour_names=tuple(syn.colours), train_per_class=syn.train_per_class,
                  validation_per_class=syn.validation_per_class, elevation_range=records.elevation_range(cfg),
                  scale_range=tuple(syn.scale_range), fov_deg=float(syn.fov_deg), supersample=syn.supersample,
                  seed=syn.seed)
    for shape in params["shape_names"]:
        shapes.make_mesh(shape, params["colour_names"][0])  # fail now, with the bad name, not in the middle of a build
    name = f"{kind}_{cfg.image_size}px_{records.config_digest(params)}"
    return SyntheticShapesConfig(name=name, description=f"synthetic_shapes {params}", **params)


def _angle(value: float) -> float:
    """Angles are stored as float32; render from the stored value so the loader's camera is the render's camera."""
    return float(np.float32(round(value, 3)))


def _camera(elevation: float, azimuth: float) -> np.ndarray:
    return get_camera(1, elevation=elevation, azimuth_start=azimuth)[0]  # [16], Blender axes, as the UNet sees it


def sample_object(config: SyntheticShapesConfig, colour: str, shape: str,
                  rng: np.random.Generator) -> tuple[shapes.Mesh, list[tuple[float, float]]]:
    """A random pose of the primitive and the (elevation, azimuth) of its views: an orbit of `num_views` views at
    one elevation, then `extra_views` views from random directions."""
    mesh = shapes.make_mesh(shape, colour, scale=rng.uniform(*config.scale_range), yaw_deg=rng.uniform(0, 360))
    elevation, azimuth_start = rng.uniform(*config.elevation_range), rng.uniform(0, 360)
    step = 360.0 / config.num_views
    angles = [(_angle(elevation), _angle((azimuth_start + i * step) % 360)) for i in range(config.num_views)]
    angles += [(_angle(rng.uniform(*config.elevation_range)), _angle(rng.uniform(0, 360)))
               for _ in range(config.extra_views)]
    return mesh, angles


def render_object(config: SyntheticShapesConfig, mesh: shapes.Mesh, angles: list[tuple[float, float]]) -> dict:
    """One multiview record (images still as RGBA arrays [V, s, s, 4]; no semantic variants)."""
    views = [raster.render(mesh, _camera(e, a), size=config.image_size, fov_deg=config.fov_deg,
                           background=None, supersample=config.supersample) for e, a in angles]
    return {"views": np.stack(views), "elevation": np.array([e for e, _ in angles], np.float32),
            "azimuth": np.array([a for _, a in angles], np.float32),
            "orbits": np.arange(config.num_views, dtype=np.int32)[None],
            "variants": records.image_bytes_list([])}


def render_class_image(config: SyntheticShapesConfig, colour: str, shape: str, rng: np.random.Generator) -> np.ndarray:
    """A 2D-mode "photo": random view, size, offset and a light background tint, so images of a class vary."""
    scale = rng.uniform(0.7, 1.25) * np.mean(config.scale_range)
    offset = (rng.uniform(-0.08, 0.08), rng.uniform(-0.08, 0.08), rng.uniform(-0.05, 0.05))
    mesh = shapes.make_mesh(shape, colour, scale=scale, yaw_deg=rng.uniform(0, 360), offset=offset)
    background = tuple(int(v) for v in rng.integers(150, 236, size=3))
    camera = _camera(rng.uniform(-10, 45), rng.uniform(0, 360))
    return raster.render(mesh, camera, size=config.image_size, fov_deg=config.fov_deg, background=background,
                         supersample=config.supersample)


def object_rng(config: SyntheticShapesConfig, split: str, label: int, index: int) -> np.random.Generator:
    """The generator that draws record `index` of class `label` (tests re-create objects with it)."""
    return np.random.default_rng([config.seed, SPLITS.index(split), label, index])


class SyntheticShapes(tfds.core.GeneratorBasedBuilder, skip_registration=True):
    """Procedural primitives rendered with data_pipelines.raster; see the module docstring."""

    VERSION = tfds.core.Version("2.0.0")
    RELEASE_NOTES = {"1.0.0": "Initial release.", "2.0.0": "Multiview renders stored RGBA (coverage alpha), no "
                     "background in the build; a variants field (empty)."}
    BUILDER_CONFIGS = [SyntheticShapesConfig(name="multiview"), SyntheticShapesConfig(name="classes", kind="classes")]
    url_infos = None  # nothing is downloaded; skips tfds' checksum lookup, which breaks on namespace packages

    def _info(self) -> tfds.core.DatasetInfo:
        config = self.builder_config
        features = records.multiview_features() if config.kind == "multiview" else records.class_features()
        return tfds.core.DatasetInfo(builder=self, description=config.description, features=features,
                                     metadata=tfds.core.MetadataDict(), disable_shuffling=config.kind == "classes")

    def _split_generators(self, dl_manager):
        del dl_manager  # nothing to download
        config = self.builder_config
        classes = class_list(config)
        # Set here, in the driver: under Beam `_generate_examples` runs in workers, whose changes are lost.
        self.info.metadata["class_names"] = [f"{colour} {shape}" for colour, shape in classes]
        for split in SPLITS:
            self.info.metadata.setdefault("class_counts", {})[split] = [per_class(config, split)] * len(classes)
        if getattr(self, "use_beam", False):
            return {split: self._beam_examples(split) for split in SPLITS}
        return {split: self._generate_examples(split) for split in SPLITS}

    def _generate_examples(self, split: str):
        for key, label, i in record_keys(self.builder_config, split):
            yield key, make_record(self.builder_config, split, label, i)

    def _beam_examples(self, split: str):
        """The same records as `_generate_examples`, one Beam element each: workers render them in parallel
        (DirectRunner here, Dataflow or Flink on a cluster: build.py)."""
        import apache_beam as beam
        config = self.builder_config
        return (beam.Create(list(record_keys(config, split)))
                | beam.Map(lambda item: (item[0], make_record(config, split, item[1], item[2]))))


def per_class(config: SyntheticShapesConfig, split: str) -> int:
    return config.train_per_class if split == "train" else config.validation_per_class


def record_keys(config: SyntheticShapesConfig, split: str):
    """(key, label, index) of every record of `split`, in key order."""
    key = 0
    for label in range(len(class_list(config))):
        for i in range(per_class(config, split)):
            yield key, label, i
            key += 1


def make_record(config: SyntheticShapesConfig, split: str, label: int, i: int) -> dict:
    """Record `i` of class `label`: a pure function of the config (what lets any worker render any record)."""
    colour, shape = class_list(config)[label]
    rng = object_rng(config, split, label, i)
    object_id = f"{colour}_{shape}_{split}_{i:05d}"
    if config.kind == "multiview":
        record = render_object(config, *sample_object(config, colour, shape, rng))
        record.update(object_id=object_id, caption=f"{article(colour)} {colour} {shape}",
                      views=[records.encode_png(view) for view in record["views"]])
        return record
    return {"image_id": object_id, "label": label, "class_name": f"{colour} {shape}",
            "image": records.encode_png(render_class_image(config, colour, shape, rng))}


def make_builder(cfg: mlc.ConfigDict, kind: str, data_dir: str) -> SyntheticShapes:
    return SyntheticShapes(data_dir=data_dir, config=make_config(cfg, kind))
