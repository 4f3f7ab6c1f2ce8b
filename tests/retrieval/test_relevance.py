"""mvrag_jax/retrieval/relevance.py (+ BM25Retriever.self_score): prompt-caption similarity and the threshold split."""

import math

import numpy as np
import pytest

from mvrag_jax.retrieval import build_index, open_retriever
from mvrag_jax.retrieval.bm25 import B, K1
from mvrag_jax.retrieval.relevance import RelevanceError, check_threshold, open_relevance
from tests.retrieval.conftest import three_caption_index
from tests.retrieval.test_dense import FIXTURE


def _tfc(length: int, mean_length: float) -> float:  # BM25 (Lucene) term-frequency part for tf 1
    return 1 / (1 + K1 * (1 - B + B * length / mean_length))


def _idf(df: int, n: int = 3) -> float:
    return math.log(1 + (n - df + 0.5) / (df + 0.5))


def test_normalised_bm25_by_hand_on_three_documents(tmp_path):
    index = three_caption_index(tmp_path)
    retriever = open_retriever(index=str(index))
    relevance = open_relevance(0.5, index=index)
    mean = 8 / 3  # analysed lengths 2, 4, 2
    # "a red cube": doc 0 holds both words (length 2, as the prompt), doc 1 only "red" (length 4), doc 2 neither
    hits = retriever.retrieve("a red cube", 4)
    assert [h.caption for h in hits] == ["a red cube", "a red sphere on a blue table"]
    own = (_idf(2) + _idf(1)) * _tfc(2, mean)
    assert retriever.self_score("a red cube") == pytest.approx(own, rel=1e-12)
    assert [h.score for h in hits] == pytest.approx([own, _idf(2) * _tfc(4, mean)], rel=1e-6)  # bm25s' own scores
    judged = relevance.judge("a red cube", hits, retriever)
    assert [(h.caption, s) for h, s in judged.kept] == [("a red cube", pytest.approx(1.0, rel=1e-6))]
    low = _idf(2) * _tfc(4, mean) / own  # 0.282
    assert [(h.caption, s) for h, s in judged.dropped] == [("a red sphere on a blue table", pytest.approx(low, 1e-6))]
    assert not judged.fell_back and judged.record()["dropped"][0]["similarity"] == pytest.approx(low, rel=1e-6)
    # a word no caption holds ("dragon", df 0) still weighs in the prompt's own score: every hit is weak
    dragon = retriever.retrieve("a red dragon", 4)
    own = (_idf(2) + _idf(0)) * _tfc(2, mean)
    assert retriever.self_score("a red dragon") == pytest.approx(own, rel=1e-12)
    similarities = relevance.similarities("a red dragon", dragon, retriever)
    np.testing.assert_allclose(similarities, [_idf(2) * _tfc(2, mean) / own, _idf(2) * _tfc(4, mean) / own],
                               rtol=1e-6)
    assert relevance.judge("a red dragon", dragon, retriever).fell_back  # 0.18 and 0.16 < 0.5
    assert open_relevance(0.0, index=index).judge("a red dragon", dragon, retriever).kept  # 0 keeps every hit


def test_clip_text_similarity_is_the_cosine_of_clip_text_features(tiny_clip):
    with np.load(FIXTURE) as data:  # transformers' get_text_features of the tiny CLIP (make_clip_fixture.py)
        prompts, features = [str(p) for p in data["prompts"]], data["text_features"]
    hits = [type("Hit", (), {"caption": caption, "path": f"/{i}.png"})() for i, caption in enumerate(prompts[1:])]
    relevance = open_relevance(-1.0, clip_model=tiny_clip)
    unit = features / np.linalg.norm(features, axis=1, keepdims=True)
    expected = unit[1:] @ unit[0]
    assert np.ptp(expected) > 0.1  # distinct similarities, so a mix-up of captions would show
    similarities = relevance.similarities(prompts[0], hits, None)  # 0.70, 0.39, 0.72
    np.testing.assert_allclose(similarities, expected, atol=1e-5, rtol=0)
    split = open_relevance(float(similarities[0]), clip_model=tiny_clip).judge(prompts[0], hits, None)
    assert [h.path for h, _ in split.kept] == ["/0.png", "/2.png"]  # a similarity equal to the threshold is kept
    assert [(h.path, s) for h, s in split.dropped] == [("/1.png", float(similarities[1]))]


def test_out_of_range_thresholds_wrong_index_kind_and_missing_model_are_refused(tmp_path, collection, tiny_clip):
    assert check_threshold(-1, "clip") == -1.0 and check_threshold(1, "bm25") == 1.0
    for threshold, measure in ((1.5, "bm25"), (-0.1, "bm25"), (1.01, "clip"), (-2, "clip")):
        with pytest.raises(RelevanceError, match=f"--relevance_threshold {threshold}: the {measure} .* lies in"):
            check_threshold(threshold, measure)
    dense = build_index(collection, tmp_path / "dense", kind="dense", clip_model=str(tiny_clip), show_progress=False)
    with pytest.raises(RelevanceError, match="dense index: it has no BM25 statistics.*--relevance_clip"):
        open_relevance(0.5, index=dense)
    open_relevance(0.5, index=dense, clip_model=tiny_clip)  # CLIP caption similarity works for any index
    with pytest.raises(FileNotFoundError, match="--relevance_clip .*nope does not exist"):
        open_relevance(0.5, index=dense, clip_model=tmp_path / "nope")
