"""Per-record transforms of the two training modes: (stored record, explicit rng) -> one example of fixed shapes.

3D mode (multiview records): F target views of one orbit with their get_camera poses, composited over the object's
grey (paper C.1), k retrieved images simulated from 2-3 extra renders of the same object (each over its own grey,
augmented with the configured mix) or, with probability mode_3d.variant_prob, taken from the object's semantic
variants; caption + ", 3d asset".
2D mode (class records): the target image in view 0 (view_mask [1, 0, ...], zero cameras, camera_mask 0), k other
images of the same class as retrievals, caption "a photo of a <class>" (no 3D suffix).

A malformed record raises `RecordError`; the loader turns it into a counted, logged skip. Configuration mistakes
(missing tokenizer, bad sizes) raise other errors and stop the run, because skipping cannot fix them.
"""

import dataclasses
import pathlib
import types

import ml_collections as mlc
import numpy as np
import tokenizers

from data_pipelines import augment, background, records
from data_pipelines.synthetic_shapes import article
from mvrag_jax.inputs.camera import get_camera
from mvrag_jax.errors import PathNotFoundError, MvragError, UsageError

MODE_3D, MODE_2D = 0, 1
DEFAULT_TOKENIZER_DIR = pathlib.Path(__file__).resolve().parents[1] / "tests/reference/tiny_release/tokenizer"


class RecordError(MvragError, ValueError):
    """A stored record cannot be turned into an example (bad bytes, inconsistent fields)."""


@dataclasses.dataclass(frozen=True)
class Skipped:
    """Stands in for a record that could not be read or transformed; the loader drops, counts and logs it."""
    record: str
    reason: str


def prompt_3d(caption: str, suffix: str = ", 3d asset") -> str:
    """The official rule: drop one trailing '.', then append the 3D suffix."""
    caption = caption.strip()
    return (caption[:-1] if caption.endswith(".") else caption) + suffix


def prompt_2d(class_name: str, template: str = "a photo of {article} {name}") -> str:
    return template.format(article=article(class_name), name=class_name)


class Tokenizer:
    """CLIP token ids [max_length] int32: `CLIPTokenizer(text, padding="max_length", max_length, truncation=True)`.

    Loaded with transformers in the process that builds the loader; worker processes receive only its Rust
    `tokenizers` backend (with the same padding and truncation), so they never import transformers (~2 s each).
    """

    def __init__(self, folder: str = "", max_length: int = 77):
        self.folder = pathlib.Path(folder or DEFAULT_TOKENIZER_DIR).expanduser()
        self.max_length = max_length
        if not self.folder.is_dir():
            raise PathNotFoundError(f"CLIP tokenizer folder {self.folder} does not exist; set --config.tokenizer_dir "
                                    "to a release's tokenizer/ folder, e.g. tests/reference/tiny_release/tokenizer")
        from transformers import CLIPTokenizer  # slow import: only where the loader is built
        clip = CLIPTokenizer.from_pretrained(str(self.folder))
        self._backend = tokenizers.Tokenizer.from_str(clip.backend_tokenizer.to_str())
        self._backend.enable_truncation(max_length=max_length)
        self._backend.enable_padding(length=max_length, pad_id=clip.pad_token_id, pad_token=clip.pad_token)

    def __getstate__(self):
        return {"folder": self.folder, "max_length": self.max_length, "backend": self._backend.to_str()}

    def __setstate__(self, state):
        self.folder, self.max_length = state["folder"], state["max_length"]
        self._backend = tokenizers.Tokenizer.from_str(state["backend"])

    def __call__(self, text: str) -> np.ndarray:
        return np.asarray(self._backend.encode(text).ids, np.int32)


def decode(data, what: str, grey: int) -> np.ndarray:
    try:
        return records.decode_image(bytes(data), grey)
    except records.DECODE_ERRORS as e:
        raise RecordError(f"{what}: undecodable image ({type(e).__name__}: {e})") from e


def decode_rgba(data, what: str) -> np.ndarray:
    try:
        return background.decode_rgba(bytes(data))
    except records.DECODE_ERRORS as e:
        raise RecordError(f"{what}: undecodable image ({type(e).__name__}: {e})") from e


def _probability(value, field: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 <= value <= 1.0:
        raise UsageError(f"--config.{field}={value!r}; a probability is in [0, 1]")
    return float(value)


@dataclasses.dataclass(frozen=True)
class Sizes:
    num_views: int
    image_size: int
    num_retrieved: int
    retrieved_size: int
    background: int  # the fixed grey of 2D images with alpha (cfg.background_level)

    @classmethod
    def from_config(cls, cfg: mlc.ConfigDict) -> "Sizes":
        return cls(cfg.num_views, cfg.image_size, cfg.num_retrieved, cfg.retrieved_size, cfg.background_level)


def _example(images, view_mask, camera, retrieved, input_ids, mode: int, ops=None) -> dict:
    example = {"images": images,                                        # [F, H, W, 3] uint8
               "view_mask": np.asarray(view_mask, np.int32),             # [F]
               "camera": np.asarray(camera, np.float32),                 # [F, 16]
               "camera_mask": np.int32(mode == MODE_3D),                 # []
               "retrieved": retrieved,                                   # [k, R, R, 3] uint8
               "input_ids": input_ids,                                   # [77] int32
               "mode": np.int32(mode)}                                   # []
    if ops is not None:  # provenance (previews only; training batches keep the layout of configs/data.py)
        example["retrieved_ops"] = np.asarray(ops, np.int32)  # [k] augment flags
    return example


class MultiviewTransform:
    """3D mode; `augment` is cfg.mode_3d.augment, `sources` the (min, max) number of extra renders used.
    provenance=True adds `retrieved_ops` [k] (augment.py flags: the ops or VARIANT that made each retrieval)."""

    def __init__(self, cfg: mlc.ConfigDict, tokenizer: Tokenizer, provenance: bool = False):
        self.sizes = Sizes.from_config(cfg)
        self.background = background.Background.from_config(cfg)
        self.suffix = cfg.mode_3d.caption_suffix
        self.sources = tuple(cfg.mode_3d.retrieval_sources)
        if len(self.sources) != 2 or not 1 <= self.sources[0] <= self.sources[1]:
            raise UsageError(f"--config.mode_3d.retrieval_sources={self.sources!r}; give (min, max) extra renders "
                             "with 1 <= min <= max, e.g. (2, 3)")
        self.augment = types.SimpleNamespace(**cfg.mode_3d.augment.to_dict())
        augment.check_params(self.augment)
        self.variant_prob = _probability(cfg.mode_3d.variant_prob, "mode_3d.variant_prob")
        self.tokenizer = tokenizer
        self.provenance = provenance

    def _retrieval(self, sources: list[np.ndarray], j: int, variants, name: str,
                   rng: np.random.Generator) -> tuple[np.ndarray, int]:
        """Retrieved image j [R, R, 3] and its provenance flags."""
        size = self.sizes.retrieved_size
        # Each retrieved image draws its own grey instead of sharing the targets': real retrievals at inference never
        # share the generated views' background, so the model must not learn to copy the background from them.
        grey = self.background.draw(rng)
        take_variant = rng.uniform() < self.variant_prob  # drawn whether or not the object has variants
        if take_variant and len(variants):
            pick = int(rng.integers(len(variants)))
            variant = background.composite(decode_rgba(variants[pick], f"{name} variant {pick}"), grey)
            return records.resize_square(variant, size), augment.VARIANT
        ops = augment.draw_ops(rng, self.augment)
        render = background.composite(sources[j % len(sources)], grey)
        return augment.simulate_retrieval(render, rng, size=size, params=self.augment, background=grey,
                                          ops=ops), ops

    def __call__(self, record: dict, rng: np.random.Generator) -> dict:
        sizes, name = self.sizes, records.as_text(record["object_id"])
        views, orbits = record["views"], np.asarray(record["orbits"])
        elevation, azimuth = np.asarray(record["elevation"]), np.asarray(record["azimuth"])
        if orbits.ndim != 2 or orbits.shape[1] != sizes.num_views or len(orbits) == 0:
            raise RecordError(f"{name}: orbits shape {orbits.shape}, expected [S>=1, {sizes.num_views}]")
        if not len(views) == len(elevation) == len(azimuth) or orbits.min() < 0 or orbits.max() >= len(views):
            raise RecordError(f"{name}: {len(views)} views, {len(elevation)} elevations, {len(azimuth)} azimuths, "
                              f"orbit indices {orbits.min()}..{orbits.max()}")
        grey = self.background.draw(rng)  # the object's: all its target views share it (paper C.1)
        target = orbits[rng.integers(len(orbits))]
        extras = np.setdiff1d(np.arange(len(views)), target)
        if len(extras) == 0:
            raise RecordError(f"{name}: no views outside the target orbit to simulate retrievals from")
        count = min(int(rng.integers(self.sources[0], self.sources[1] + 1)), len(extras))
        sources = [decode_rgba(views[i], f"{name} view {i}") for i in rng.choice(extras, size=count, replace=False)]
        variants = record.get("variants", ())  # records built before variants existed have none
        made = [self._retrieval(sources, j, variants, name, rng) for j in range(sizes.num_retrieved)]
        retrieved = np.stack([image for image, _ in made])
        images = np.stack([records.resize_square(background.composite(decode_rgba(views[i], f"{name} view {i}"), grey),
                                                 sizes.image_size) for i in target])
        # The exact pose the UNet is conditioned on; synthetic views were rendered from this same call.
        camera = np.stack([get_camera(1, float(elevation[i]), float(azimuth[i]))[0] for i in target])
        input_ids = self.tokenizer(prompt_3d(records.as_text(record["caption"]), self.suffix))
        return _example(images, np.ones(sizes.num_views), camera, retrieved, input_ids, MODE_3D,
                        [ops for _, ops in made] if self.provenance else None)


class ClassTransform:
    """2D mode. `source` is the whole split (retrievals may come from any host's shard) and `class_ranges` [C, 2]
    the [start, end) record range of each label; a class with one image retrieves crops of the target itself."""

    def __init__(self, cfg: mlc.ConfigDict, tokenizer: Tokenizer, source, class_ranges: np.ndarray,
                 provenance: bool = False):
        self.sizes = Sizes.from_config(cfg)
        self.provenance = provenance
        self.template = cfg.mode_2d.caption_template
        self.crop_scale = tuple(cfg.mode_2d.crop_scale)
        self.tokenizer = tokenizer
        self.source = source
        self.class_ranges = np.asarray(class_ranges)

    def _retrievals(self, index: int, label: int, rng: np.random.Generator) -> list[np.ndarray]:
        """Decoded images of up to k other records of the class; damaged ones are passed over."""
        start, end = self.class_ranges[label]
        found = []
        for other in rng.permutation(np.setdiff1d(np.arange(start, end), [index])):
            record = self.source[int(other)]
            if isinstance(record, Skipped):
                continue
            try:
                found.append(decode(record["image"], f"record {other}", self.sizes.background))
            except RecordError:
                continue
            if len(found) == self.sizes.num_retrieved:
                break
        return found

    def __call__(self, record: dict, rng: np.random.Generator) -> dict:
        sizes, index = self.sizes, int(record["_index"])
        label = int(record["label"])
        if not 0 <= label < len(self.class_ranges):
            raise RecordError(f"record {index}: label {label} outside 0..{len(self.class_ranges) - 1}")
        target = decode(record["image"], f"record {index}", sizes.background)
        pool = self._retrievals(index, label, rng) or [target]
        retrieved = np.stack([augment.random_resized_crop(pool[j % len(pool)], rng, sizes.retrieved_size,
                                                          self.crop_scale) for j in range(sizes.num_retrieved)])
        images = np.zeros((sizes.num_views, sizes.image_size, sizes.image_size, 3), np.uint8)
        images[0] = records.resize_square(target, sizes.image_size)
        view_mask = np.zeros(sizes.num_views)
        view_mask[0] = 1
        input_ids = self.tokenizer(prompt_2d(records.as_text(record["class_name"]), self.template))
        return _example(images, view_mask, np.zeros((sizes.num_views, 16)), retrieved, input_ids, MODE_2D,
                        [augment.SAME_CLASS] * sizes.num_retrieved if self.provenance else None)
