"""The synthetic shapes as a captioned retrieval collection (for `mvrag index` / demos without downloads).

    python -m data_pipelines.shape_collection --config configs/data.py:size=tiny --out /tmp/shapes_collection
    mvrag index --collection /tmp/shapes_collection/collection.jsonl --out /tmp/shapes_bm25

Images are the `classes` (2D mode) renders of synthetic_shapes, drawn with the same per-record generators, so they are
the images of that dataset's split; captions are its multiview captions ("a red cube").
"""

import pathlib
from typing import Iterator

import ml_collections as mlc

from data_pipelines import synthetic_shapes
from mvrag_jax.retrieval.collection import write_collection


def class_image_records(cfg: mlc.ConfigDict, split: str = "train", per_class: int | None = None) -> Iterator[dict]:
    """{"name", "image" (uint8 [s, s, 3]), "caption"} per image, class by class (the builder's order)."""
    config = synthetic_shapes.make_config(cfg, "classes")
    if per_class is None:
        per_class = config.train_per_class if split == "train" else config.validation_per_class
    for label, (colour, shape) in enumerate(synthetic_shapes.class_list(config)):
        for i in range(per_class):
            rng = synthetic_shapes.object_rng(config, split, label, i)
            yield {"name": f"{colour}_{shape}_{split}_{i:05d}",
                   "image": synthetic_shapes.render_class_image(config, colour, shape, rng),
                   "caption": f"{synthetic_shapes.article(colour)} {colour} {shape}"}


def export_collection(cfg: mlc.ConfigDict, out_dir: str | pathlib.Path, *, split: str = "train",
                      per_class: int | None = None, overwrite: bool = False) -> pathlib.Path:
    """Write the collection folder; returns its collection.jsonl."""
    return write_collection(class_image_records(cfg, split, per_class), out_dir, overwrite=overwrite)


if __name__ == "__main__":
    from absl import app, flags
    from ml_collections import config_flags

    config_flags.DEFINE_config_file("config", "configs/data.py:size=tiny", "Data config.", lock_config=True)
    flags.DEFINE_string("out", None, "Collection folder to write.", required=True)
    flags.DEFINE_integer("per_class", None, "Images per class (default: the split's count).")
    flags.DEFINE_bool("overwrite", False, "Replace --out if it exists.")
    app.run(lambda argv: print(export_collection(flags.FLAGS.config, flags.FLAGS.out, per_class=flags.FLAGS.per_class,
                                                 overwrite=flags.FLAGS.overwrite)))
