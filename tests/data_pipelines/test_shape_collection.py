"""data_pipelines/shape_collection.py: the synthetic class images exported as a captioned collection, BM25-indexable."""

import numpy as np
from PIL import Image

from configs import data
from data_pipelines import shape_collection, synthetic_shapes
from mvrag_jax.retrieval import build_index, open_retriever, read_collection


def test_export_is_the_class_images_with_captions_and_bm25_finds_them(tmp_path):
    cfg = data.get_config("size=tiny")
    path = shape_collection.export_collection(cfg, tmp_path / "shapes", per_class=2)
    root, records = read_collection(path)
    config = synthetic_shapes.make_config(cfg, "classes")
    classes = synthetic_shapes.class_list(config)
    assert len(records) == 2 * len(classes)
    assert records[0].caption == f"a {classes[0][0]} {classes[0][1]}" and records[0].image.endswith("_00000.png")
    rng = synthetic_shapes.object_rng(config, "train", 0, 0)
    first = synthetic_shapes.render_class_image(config, *classes[0], rng)
    assert np.array_equal(np.asarray(Image.open(root / records[0].image)), first)  # PNG: the render, bit-exact
    hits = open_retriever(index=str(build_index(path, tmp_path / "idx", show_progress=False))).retrieve(
        "a green cube", 2)
    assert [h.caption for h in hits] == ["a green cube", "a green cube"]
