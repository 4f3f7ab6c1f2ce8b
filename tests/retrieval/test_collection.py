"""mvrag_jax/retrieval/collection.py: reading (line-numbered errors, path escapes) and writing collections."""

import json

import numpy as np
import pytest
from PIL import Image

from mvrag_jax.retrieval import CollectionError, read_collection, write_collection
from tests.retrieval.conftest import CAPTIONS


def test_write_then_read_round_trip(collection):
    root, records = read_collection(collection)
    assert root == collection.parent
    assert [r.caption for r in records] == CAPTIONS
    assert records[0].image == "images/img_0.png"
    assert np.asarray(Image.open(root / records[0].image))[0, 0].tolist() == [220, 30, 30]


def test_write_collection_refuses_existing_and_bad_names(tmp_path, collection):
    with pytest.raises(ValueError, match="--overwrite"):
        write_collection([{"name": "x", "image": np.zeros((2, 2, 3), np.uint8), "caption": "c"}], collection.parent)
    with pytest.raises(CollectionError, match="not a safe file name"):
        write_collection([{"name": "../x", "image": np.zeros((2, 2, 3), np.uint8), "caption": "c"}], tmp_path / "o")
    assert not (tmp_path / "o").exists()  # atomic: nothing left behind


@pytest.mark.parametrize("image", ["/etc/passwd", "../outside.png", "a/../../x.png", "C:/x.png", "a\\b.png", "."])
def test_paths_escaping_the_root_are_refused_with_the_line(tmp_path, image):
    path = tmp_path / "c.jsonl"
    path.write_text(json.dumps({"image": "ok.png", "caption": "fine"}) + "\n\n"
                    + json.dumps({"image": image, "caption": "bad"}) + "\n")
    with pytest.raises(CollectionError, match=f"c.jsonl:3: image path"):
        read_collection(path)


def test_inner_dot_dot_that_stays_inside_is_normalised(tmp_path):
    path = tmp_path / "c.jsonl"
    path.write_text(json.dumps({"image": "./a/../b//c.png", "caption": "x"}) + "\n")
    assert read_collection(path)[1][0].image == "b/c.png"


@pytest.mark.parametrize("line, message", [
    ("{not json", "not valid JSON"), ("[1, 2]", "JSON object"), ('{"caption": "x"}', "'image' must be"),
    ('{"image": "a.png", "caption": 3}', "'caption' must be")])
def test_bad_lines_name_their_line_number(tmp_path, line, message):
    path = tmp_path / "c.jsonl"
    path.write_text('{"image": "a.png", "caption": "x"}\n' + line + "\n")
    with pytest.raises(CollectionError, match=f"c.jsonl:2: .*{message}"):
        read_collection(path)


def test_missing_and_empty_collections(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        read_collection(tmp_path / "nope.jsonl")
    (tmp_path / "empty.jsonl").write_text("\n  \n")
    with pytest.raises(CollectionError, match="no records"):
        read_collection(tmp_path / "empty.jsonl")
