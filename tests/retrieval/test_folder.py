"""mvrag_jax/retrieval/folder.py + base.py: name order, first k, skipping non-images and corrupt files, empty folders."""

import logging

import numpy as np
import pytest
from PIL import Image

from mvrag_jax.retrieval import EmptyRetrievalError, RetrievalError, open_retriever
from mvrag_jax.retrieval.folder import FolderRetriever


def _write(path, value):
    Image.fromarray(np.full((8, 10, 3), value, np.uint8)).save(path)


def test_first_k_images_in_name_order_skipping_bad_files(tmp_path, caplog):
    for name, value in (("c.png", 3), ("a.jpg", 1), ("b.PNG", 2), ("e.webp", 5), ("f.bmp", 6)):
        _write(tmp_path / name, value)
    (tmp_path / "b2.jpeg").write_bytes(b"not a jpeg")  # corrupt: skipped, the next file takes its place
    (tmp_path / "notes.txt").write_text("hi")
    (tmp_path / ".DS_Store").write_bytes(b"\0")
    (tmp_path / "sub").mkdir()
    with caplog.at_level(logging.WARNING):
        retriever = FolderRetriever(tmp_path)
        hits = retriever.retrieve("ignored prompt", 4)
    assert [h.path.rsplit("/", 1)[1] for h in hits] == ["a.jpg", "b.PNG", "c.png", "e.webp"]
    assert all(h.image.dtype == np.uint8 and h.image.shape == (8, 10, 3) for h in hits)
    assert hits[0].image[0, 0, 0] in (0, 1, 2) and hits[2].image[0, 0, 0] == 3  # jpeg is lossy; png is exact
    assert all(h.score is None and h.caption is None for h in hits)
    warned = [r.getMessage() for r in caplog.records]
    assert sum("b2.jpeg" in m for m in warned) == 1 and sum("notes.txt" in m for m in warned) == 1
    assert not any(".DS_Store" in m or "sub" in m.split("/")[-1] for m in warned)


def test_fewer_images_than_k_returns_all_with_a_warning(tmp_path, caplog):
    _write(tmp_path / "one.png", 9)
    with caplog.at_level(logging.WARNING):
        hits = open_retriever(folder=str(tmp_path)).retrieve("x", 4)
    assert len(hits) == 1 and "only 1 of the 4" in caplog.text


def test_grayscale_and_rgba_become_rgb(tmp_path):
    Image.fromarray(np.full((4, 4), 7, np.uint8)).save(tmp_path / "a.png")
    Image.fromarray(np.full((4, 4, 4), 9, np.uint8)).save(tmp_path / "b.png")
    hits = FolderRetriever(tmp_path).retrieve("", 2)
    assert [h.image.shape for h in hits] == [(4, 4, 3), (4, 4, 3)]


def test_empty_or_unusable_folders_raise_empty_retrieval(tmp_path):
    with pytest.raises(EmptyRetrievalError, match="holds no image"):
        FolderRetriever(tmp_path)
    (tmp_path / "bad.png").write_bytes(b"\x89PNG broken")
    with pytest.raises(EmptyRetrievalError, match="could be read"):
        FolderRetriever(tmp_path).retrieve("", 4)


def test_bad_arguments(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        FolderRetriever(tmp_path / "nope")
    _write(tmp_path / "a.png", 1)
    with pytest.raises(RetrievalError, match="positive integer"):
        FolderRetriever(tmp_path).retrieve("", 0)
    with pytest.raises(RetrievalError, match="exactly one"):
        open_retriever(folder=str(tmp_path), index=str(tmp_path))
    with pytest.raises(RetrievalError, match="exactly one"):
        open_retriever()
