"""mvrag_jax/retrieval/bm25.py + index.py: Pyserini-default BM25 over captions, analysis, save/load, missing files."""

import json
import logging
import math
import shutil

import pytest

from mvrag_jax.retrieval import EmptyRetrievalError, RetrievalError, build_index, open_retriever
from mvrag_jax.retrieval.bm25 import B, K1, analyze, make_stemmer


@pytest.fixture
def index(collection, tmp_path):
    return build_index(collection, tmp_path / "idx", show_progress=False)


def _names(hits):
    return [h.path.rsplit("/", 1)[1] for h in hits]


def test_analysis_lowercases_drops_stop_words_and_stems():
    stem = make_stemmer()
    assert analyze("The Red CUBES of a Car's wheels", stem) == ["red", "cube", "car", "wheel"]
    assert analyze("A", stem) == []


def test_ranking_matches_the_lucene_bm25_formula(index):
    hits = open_retriever(index=str(index)).retrieve("red sphere", 3)
    # "a red sphere" holds both terms; "a red cube" and "a blue sphere" one each. red (df 2) and sphere (df 2) have
    # equal idf, and both one-term docs have length 2: their tie breaks by path, as Anserini's docid order.
    assert _names(hits) == ["img_3.png", "img_0.png", "img_1.png"]
    assert [h.caption for h in hits] == ["a red sphere", "a red cube", "a blue sphere"]
    n, avgdl = 6, 13 / 6  # analysed lengths: 2, 2, 2, 2, 2, 3 ("two blue cubes")
    idf = math.log(1 + (n - 2 + 0.5) / (2 + 0.5))
    term = idf * 1 / (1 + K1 * (1 - B + B * 2 / avgdl))
    assert hits[0].score == pytest.approx(2 * term, rel=1e-5) and hits[1].score == pytest.approx(term, rel=1e-5)
    assert hits[0].image.shape == (24, 28, 3) and hits[0].image[0, 0].tolist() == [220, 30, 30]


def test_prompts_are_lower_cased_and_stemmed(index):
    retriever = open_retriever(index=str(index))
    upper = retriever.retrieve("BLUE CUBES!", 2)
    # img_5 "two blue cubes" has both terms; img_0 (cube) and img_1 (blue) tie and break by path.
    assert _names(upper) == _names(retriever.retrieve("blue cube", 2)) == ["img_5.png", "img_0.png"]


def test_no_match_is_an_empty_retrieval(index):
    with pytest.raises(EmptyRetrievalError, match="shares a word"):
        open_retriever(index=str(index)).retrieve("purple pyramid", 4)
    with pytest.raises(EmptyRetrievalError):
        open_retriever(index=str(index)).retrieve("the a of", 4)  # only stop words


def test_missing_images_are_skipped_and_lower_hits_fill_k(index, collection, caplog):
    (collection.parent / "images" / "img_3.png").unlink()
    with caplog.at_level(logging.WARNING):
        hits = open_retriever(index=str(index)).retrieve("red sphere", 2)
    assert _names(hits) == ["img_0.png", "img_1.png"]
    assert "img_3.png" in caplog.text and "does not exist" in caplog.text


def test_index_folder_round_trip_and_manifest(index, collection, tmp_path):
    manifest = json.loads((index / "manifest.json").read_text())
    assert manifest["kind"] == "bm25" and manifest["count"] == 6 and manifest["root"] == str(collection.parent)
    assert manifest["bm25"]["k1"] == 0.9 and manifest["bm25"]["b"] == 0.4
    moved = tmp_path / "moved_idx"  # the index folder itself is relocatable; images stay at `root`
    shutil.copytree(index, moved)
    assert _names(open_retriever(index=str(moved)).retrieve("green", 1)) == ["img_2.png"]
    with pytest.raises(ValueError, match="--overwrite"):
        build_index(collection, index, show_progress=False)
    build_index(collection, index, overwrite=True, show_progress=False)


def test_index_errors(collection, tmp_path, index):
    with pytest.raises(FileNotFoundError, match="not a retrieval index"):
        open_retriever(index=str(tmp_path))
    with pytest.raises(RetrievalError, match="only used by --kind dense"):
        build_index(collection, tmp_path / "x", clip_model="m")
    with pytest.raises(RetrievalError, match="needs --clip_model"):
        build_index(collection, tmp_path / "x", kind="dense")
    with pytest.raises(RetrievalError, match="dense indexes"):
        open_retriever(index=str(index), clip_model="m")
    shutil.rmtree(collection.parent)
    with pytest.raises(RetrievalError, match="no longer exists"):
        open_retriever(index=str(index))
