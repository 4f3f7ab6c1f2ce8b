"""data_pipelines/shape_collection.py: the synthetic class images exported as a captioned collection, BM25-indexable."""

import numpy as np
import pytest
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


def test_named_concepts_join_the_collection_under_their_names_only(tmp_path):
    """configs/demo_concepts.json: each name gets renders of its look, captioned "a NAME" (a word no training caption
    uses), so BM25 finds them by the new name; --background puts every image on that grey."""
    cfg = data.get_config("size=demo")
    concepts = shape_collection.read_concepts("configs/demo_concepts.json")
    assert len(concepts) == 8 and set(concepts.values()) <= set(synthetic_shapes.class_list(
        synthetic_shapes.make_config(cfg, "classes")))
    path = shape_collection.export_collection(cfg, tmp_path / "shapes", per_class=1, concepts=concepts,
                                              background=127)
    root, records = read_collection(path)
    assert len(records) == 16 + 8 and records[-8].caption == "a dax"
    colour, shape = concepts["dax"]
    first = synthetic_shapes.render_class_image(synthetic_shapes.make_config(cfg, "classes"), colour, shape,
                                                np.random.default_rng([0, shape_collection.CONCEPT_SEED, 0, 0]), 127)
    image = np.asarray(Image.open(root / records[-8].image))
    assert np.array_equal(image, first) and (image[0] == 127).all()
    retriever = open_retriever(index=str(build_index(path, tmp_path / "idx", show_progress=False)))
    assert [h.caption for h in retriever.retrieve("a dax", 1)] == ["a dax"]
    names = set(concepts)
    assert not any(word in names for r in records[:16] for word in r.caption.split())


def test_bad_concepts_file_names_the_format(tmp_path):
    bad = tmp_path / "concepts.json"
    bad.write_text('{"dax": "blue blob"}')
    with pytest.raises(shape_collection.ConceptError, match="colour shape"):
        shape_collection.read_concepts(bad)
