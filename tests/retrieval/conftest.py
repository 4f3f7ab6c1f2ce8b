"""Fixtures: a small captioned collection written by write_collection, and the tiny random CLIPModel."""

import pathlib

import numpy as np
import pytest

from mvrag_jax.retrieval import write_collection
from tests.retrieval.tiny_clip import write_tiny_clip

COLOURS = {"red": (220, 30, 30), "blue": (30, 30, 220), "green": (30, 200, 30), "yellow": (230, 220, 40)}
CAPTIONS = ["a red cube", "a blue sphere", "a green cone", "a red sphere", "a yellow torus", "two blue cubes"]


def solid(colour: str, size: int = 24) -> np.ndarray:
    return np.broadcast_to(np.asarray(COLOURS[colour], np.uint8), (size, size + 4, 3)).copy()


@pytest.fixture
def collection(tmp_path) -> pathlib.Path:
    """collection.jsonl of CAPTIONS (image i: images/img_i.png, a solid image of the caption's colour)."""
    records = [{"name": f"img_{i}", "image": solid(caption.split()[1]), "caption": caption}
               for i, caption in enumerate(CAPTIONS)]
    return write_collection(records, tmp_path / "shapes")


@pytest.fixture(scope="session")
def tiny_clip(tmp_path_factory) -> pathlib.Path:
    return write_tiny_clip(tmp_path_factory.mktemp("clip") / "tiny_clip")


# A 3-document collection whose BM25 statistics are easy by hand (analysed: [red, cube], [red, sphere, blue, tabl],
# [blue, sphere]; N 3, mean length 8/3); tests/retrieval/test_relevance.py and tests/pipeline use it.
THREE_CAPTIONS = ["a red cube", "a red sphere on a blue table", "a blue sphere"]


def three_caption_index(folder: pathlib.Path) -> pathlib.Path:
    """A BM25 index (folder/idx) over THREE_CAPTIONS, image i: folder/three/images/doc_i.png in the caption's colour."""
    from mvrag_jax.retrieval import build_index
    records = [{"name": f"doc_{i}", "image": solid(caption.split()[1]), "caption": caption}
               for i, caption in enumerate(THREE_CAPTIONS)]
    return build_index(write_collection(records, folder / "three"), folder / "idx", show_progress=False)
