"""retrieval/postings.py + the sharded BM25 index (index.py, bm25.py): streamed builds, memory-mapped reads, and N
shards whose merged hits are exactly one index's."""

import json
import math

import numpy as np
import pytest

from mvrag_jax.retrieval import RetrievalError, build_index, open_retriever, write_collection
from mvrag_jax.retrieval import postings as postings_lib
from mvrag_jax.retrieval.bm25 import B, K1
from mvrag_jax.retrieval.collection import CollectionRecord, RecordFile, sorted_by_image, write_records
from mvrag_jax.retrieval.index import join_shards, shard_of
from tests.retrieval.conftest import solid

WORDS = ["red", "blue", "green", "cube", "sphere", "cone", "torus", "small", "large", "shiny", "matte", "toy"]


def _captions(n: int, seed: int = 0) -> list[str]:
    rng = np.random.default_rng(seed)
    return [" ".join(rng.choice(WORDS, rng.integers(1, 6))) for _ in range(n)]


def _brute_force(docs: list[list[str]], query: list[str]) -> np.ndarray:
    """Lucene BM25 by the formula, in float64, for every document."""
    n, avgdl = len(docs), sum(map(len, docs)) / len(docs)
    out = np.zeros(n)
    for term in query:
        df = sum(term in d for d in docs)
        if not df:
            continue
        idf = math.log(1 + (n - df + 0.5) / (df + 0.5))
        for i, d in enumerate(docs):
            tf = d.count(term)
            out[i] += idf * tf / (tf + K1 * (1 - B + B * len(d) / avgdl)) if tf else 0.0
    return out


def test_postings_match_the_formula_across_chunks(tmp_path):
    docs = [c.split() for c in _captions(300)] + [[]]  # an empty caption counts in N and the mean length
    stats = postings_lib.write_postings(tmp_path / "p", docs, chunk_docs=37)  # 9 chunks: the scatter must line up
    assert stats["documents"] == 301 and stats["terms"] == len(WORDS)
    assert not list((tmp_path / "p").glob(".postings-*"))  # the scratch files are gone
    shard = postings_lib.Postings(tmp_path / "p")
    assert isinstance(shard.docs, np.memmap) and isinstance(shard.tfs, np.memmap)
    for term in ("red", "toy"):
        got_docs, got_tfs = shard.postings(term)
        want = [i for i, d in enumerate(docs) if term in d]
        assert got_docs.tolist() == want and got_tfs.tolist() == [docs[i].count(term) for i in want]
    assert shard.term_id("purple") is None and shard.df("purple") == 0 and shard.df("cube") > 0
    query = ["red", "cube", "cube", "purple"]
    stats = postings_lib.GlobalStats((shard,))
    got = postings_lib.score_shard(shard, postings_lib.query_weights(query, stats), stats.mean_length, K1, B)
    np.testing.assert_allclose(got, _brute_force(docs, query), rtol=1e-6, atol=1e-7)


def test_ranked_is_a_stable_sort_found_lazily():
    scores = np.array([0, 3, 1, 3, 0, 2, 3, 1, 0.5], np.float32)
    want = [int(i) for i in np.argsort(-scores, kind="stable") if scores[i] > 0]
    for first in (1, 2, 4, 20):
        assert list(postings_lib.ranked(scores, first)) == want
    assert list(postings_lib.ranked(np.zeros(5, np.float32), 3)) == []


def test_record_file_reads_single_lines_and_the_external_sort(tmp_path):
    records = [CollectionRecord(f"img/{i:03d}.png", f"caption {i} é") for i in (5, 3, 9, 1, 7, 2, 8)]
    merged = list(sorted_by_image(records, run=3))  # three runs spilled and merged
    assert [r.image for r in merged] == sorted(r.image for r in records)
    assert write_records(tmp_path / "r.jsonl", merged) == 7
    stored = RecordFile(tmp_path / "r.jsonl")
    assert len(stored) == 7 and stored[2] == merged[2] and stored[-1] == merged[-1] and list(stored) == merged
    (tmp_path / "r.jsonl.offsets.npy").unlink()  # an index from before the offsets file: scanned at open
    assert list(RecordFile(tmp_path / "r.jsonl")) == merged


@pytest.fixture
def big_collection(tmp_path):
    """120 captioned images with many exact ties (captions repeat), names not in caption order."""
    captions = _captions(120, seed=1)
    records = [{"name": f"im_{(i * 37) % 120:03d}", "image": solid("red", 4), "caption": c}
               for i, c in enumerate(captions)]
    return write_collection(records, tmp_path / "big")


@pytest.mark.parametrize("prompt", ["red cube", "shiny toy toy", "small", "green torus matte large"])
def test_shards_give_exactly_the_hits_of_one_index(big_collection, tmp_path, prompt):
    one = open_retriever(index=str(build_index(big_collection, tmp_path / "one", show_progress=False)))
    sharded = build_index(big_collection, tmp_path / "three", num_shards=3, show_progress=False)
    manifest = json.loads((sharded / "manifest.json").read_text())
    assert manifest["shards"] == ["shard_00000", "shard_00001", "shard_00002"] and manifest["count"] == 120
    parts = [json.loads((sharded / s / "manifest.json").read_text())["count"] for s in manifest["shards"]]
    assert sum(parts) == 120 and min(parts) > 0  # every shard got records
    three = open_retriever(index=str(sharded))
    assert len(three.shards) == 3 and three.num_docs == 120 and three.mean_length == one.mean_length
    want, got = one.retrieve(prompt, 30), three.retrieve(prompt, 30)
    assert [(h.path, h.score) for h in got] == [(h.path, h.score) for h in want]  # scores bit-identical
    assert len({h.score for h in want}) < len(want)  # the prompt has ties, and they broke the same way
    assert three.self_score(prompt) == one.self_score(prompt)


def test_shards_built_apart_and_joined(big_collection, tmp_path):
    folders = [build_index(big_collection, tmp_path / f"host_{i}", num_shards=2, shard_index=i, show_progress=False)
               for i in range(2)]
    for i, folder in enumerate(folders):
        images = [r.image for r in RecordFile(folder / "records.jsonl")]
        assert images == sorted(images) and all(shard_of(image, 2) == i for image in images)
    joined = join_shards(folders, tmp_path / "all")
    one = open_retriever(index=str(build_index(big_collection, tmp_path / "one", show_progress=False)))
    hits = lambda r: [(h.path, h.score) for h in r.retrieve("blue sphere", 50)]
    assert hits(open_retriever(index=str(joined))) == hits(one)
    with pytest.raises(RetrievalError, match="only ordinary BM25 indexes"):
        join_shards([joined], tmp_path / "again")
    with pytest.raises(RetrievalError, match="--shard_index 2 is not in"):
        build_index(big_collection, tmp_path / "x", num_shards=2, shard_index=2)
    with pytest.raises(RetrievalError, match="applies to BM25"):
        build_index(big_collection, tmp_path / "x", kind="dense", clip_model="m", num_shards=2)


def test_an_index_of_the_bm25s_layout_asks_for_a_rebuild(big_collection, tmp_path):
    index = build_index(big_collection, tmp_path / "idx", show_progress=False)
    manifest = json.loads((index / "manifest.json").read_text())
    del manifest["bm25"]["layout"]
    (index / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(RetrievalError, match="layout 'bm25s'.*--overwrite"):
        open_retriever(index=str(index))
