"""The synthetic shapes as a captioned retrieval collection (for `mvrag index` / demos without downloads).

    python -m data_pipelines.shape_collection --config configs/data.py:size=tiny --out /tmp/shapes_collection
    mvrag index --collection /tmp/shapes_collection/collection.jsonl --out /tmp/shapes_bm25
    python -m data_pipelines.shape_collection --config configs/data.py:size=demo --concepts configs/demo_concepts.json \
        --out /tmp/demo_collection

Images are the `classes` (2D mode) renders of synthetic_shapes, drawn with the same per-record generators, so they are
the images of that dataset's split; captions are its multiview captions ("a red cube"). `--concepts` adds named
concepts (a JSON object {"dax": "blue torus", ...}): `per_class` class renders of that colour and shape each,
captioned "a dax", from their own generators (split "concepts"); with the config's `synthetic.held_out` classes they
are looks that no training step saw, under names no caption used.
"""

import itertools
import json
import pathlib
from typing import Iterator, Mapping

import ml_collections as mlc
import numpy as np

from data_pipelines import synthetic_shapes
from mvrag_jax.retrieval.collection import write_collection


def class_image_records(cfg: mlc.ConfigDict, split: str = "train", per_class: int | None = None,
                        background: int | None = None) -> Iterator[dict]:
    """{"name", "image" (uint8 [s, s, 3]), "caption"} per image, class by class (the builder's order)."""
    config = synthetic_shapes.make_config(cfg, "classes")
    if per_class is None:
        per_class = config.train_per_class if split == "train" else config.validation_per_class
    for label, (colour, shape) in enumerate(synthetic_shapes.class_list(config)):
        for i in range(per_class):
            rng = synthetic_shapes.object_rng(config, split, label, i)
            yield {"name": f"{colour}_{shape}_{split}_{i:05d}",
                   "image": synthetic_shapes.render_class_image(config, colour, shape, rng, background),
                   "caption": f"{synthetic_shapes.article(colour)} {colour} {shape}"}


CONCEPT_SEED = 1  # the concept renders' generators: [data seed, CONCEPT_SEED, concept number, image]


class ConceptError(ValueError):
    """A concepts file the collection cannot use."""


def read_concepts(path: str | pathlib.Path) -> dict[str, tuple[str, str]]:
    """{"dax": "blue torus", ...} -> {"dax": ("blue", "torus")}, checked against the palette and shapes."""
    from data_pipelines import shapes
    try:
        raw = json.loads(pathlib.Path(path).read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise ConceptError(f"concepts file {path}: {e}; write a JSON object {{\"dax\": \"blue torus\", ...}}") from None
    concepts = {}
    for name, look in raw.items() if isinstance(raw, dict) else ():
        colour, _, shape = str(look).partition(" ")
        if shape not in shapes.SHAPE_NAMES or colour not in [c for c, _ in shapes.COLOURS] or " " in name:
            raise ConceptError(f"concepts file {path}: {name!r}: {look!r} must be \"colour shape\" with a colour of "
                               f"data_pipelines/shapes.py COLOURS and a shape of {shapes.SHAPE_NAMES}, the name one "
                               "word")
        concepts[name] = (colour, shape)
    if not concepts:
        raise ConceptError(f"concepts file {path} names no concept; write {{\"dax\": \"blue torus\", ...}}")
    return concepts


def concept_records(cfg: mlc.ConfigDict, concepts: Mapping[str, tuple[str, str]], per_class: int,
                    background: int | None = None) -> Iterator[dict]:
    """{"name", "image", "caption"} per image of each named concept ("a dax"), `per_class` images each."""
    config = synthetic_shapes.make_config(cfg, "classes")
    for number, (name, (colour, shape)) in enumerate(concepts.items()):
        for i in range(per_class):
            rng = np.random.default_rng([config.seed, CONCEPT_SEED, number, i])
            yield {"name": f"concept_{name}_{i:05d}",
                   "image": synthetic_shapes.render_class_image(config, colour, shape, rng, background),
                   "caption": f"{synthetic_shapes.article(name)} {name}"}


def export_collection(cfg: mlc.ConfigDict, out_dir: str | pathlib.Path, *, split: str = "train",
                      per_class: int | None = None, concepts: Mapping[str, tuple[str, str]] | None = None,
                      background: int | None = None, overwrite: bool = False) -> pathlib.Path:
    """Write the collection folder; returns its collection.jsonl. `background`: a grey level for every image
    instead of the 2D set's random tints (the demo's, whose colour DINOv2 reads colour against that grey)."""
    records = class_image_records(cfg, split, per_class, background)
    if concepts:
        count = per_class or synthetic_shapes.make_config(cfg, "classes").train_per_class
        records = itertools.chain(records, concept_records(cfg, concepts, count, background))
    return write_collection(records, out_dir, overwrite=overwrite)


if __name__ == "__main__":
    from absl import app, flags
    from ml_collections import config_flags

    import configs

    config_flags.DEFINE_config_file("config", configs.resolve("data.py:size=tiny"), "Data config.", lock_config=True)
    flags.DEFINE_string("out", None, "Collection folder to write.", required=True)
    flags.DEFINE_integer("per_class", None, "Images per class (default: the split's count).")
    flags.DEFINE_string("concepts", None, "JSON {name: \"colour shape\"}: named concepts to add (captioned 'a NAME').")
    flags.DEFINE_integer("background", None, "Grey level (0-255) behind every image instead of random light tints.")
    flags.DEFINE_bool("overwrite", False, "Replace --out if it exists.")

    def main(argv):
        fv = flags.FLAGS
        try:
            concepts = read_concepts(fv.concepts) if fv.concepts else None
        except ConceptError as e:
            raise app.UsageError(str(e))
        print(export_collection(fv.config, fv.out, per_class=fv.per_class, concepts=concepts,
                                background=fv.background, overwrite=fv.overwrite))

    app.run(main)
