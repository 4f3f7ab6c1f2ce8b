"""retrieval/ann.py (FAISS: exact below a size, IVF-PQ + exact re-ranking above) and retrieval/laion.py (a published
LAION knn index: clip-retrieval's image.index + metadata/*.parquet)."""

import numpy as np
import pytest

faiss = pytest.importorskip("faiss")
pq = pytest.importorskip("pyarrow.parquet")
import pyarrow as pa  # noqa: E402

from mvrag_jax.bench.retrieval import mixture  # noqa: E402
from mvrag_jax.retrieval import RetrievalError, ann  # noqa: E402
from mvrag_jax.retrieval.laion import LaionIndex, LaionRetriever, is_laion_index  # noqa: E402
from tests.retrieval.conftest import solid  # noqa: E402
from PIL import Image  # noqa: E402


def _recall(found, exact, k):
    return np.mean([len(set(f.tolist()) & set(e.tolist())) / k for f, e in zip(found, exact)])


def test_factory_picks_exact_search_below_the_size():
    assert ann.factory_string(ann.EXACT_BELOW - 1, 64) == "Flat"
    assert ann.factory_string(1_000_000, 64) == "IVF1024,PQ16x8"  # sqrt(n) lists, d/4 bytes a vector


def test_ivf_pq_with_re_ranking_reaches_the_recall_goal(tmp_path, monkeypatch):
    monkeypatch.setattr(ann, "EXACT_BELOW", 1000)
    embeddings, queries = mixture(4000, 16, seed=0, centres=50), mixture(40, 16, seed=9, centres=50)
    np.save(tmp_path / ann.EMBEDDINGS_FILE, embeddings)
    index = ann.build(np.load(tmp_path / ann.EMBEDDINGS_FILE, mmap_mode="r"))
    assert isinstance(index, faiss.IndexIVFPQ) and index.nlist == 64 and index.nprobe == ann.NPROBE
    ann.save(index, tmp_path / ann.INDEX_FILE)
    searcher = ann.Searcher.open(tmp_path)
    exact = ann.exact_search(embeddings, queries, 10)
    hits = [searcher.search(q, 10) for q in queries]
    assert _recall([ids for _, ids in hits], exact, 10) >= 0.95
    scores, ids = hits[0]
    np.testing.assert_allclose(scores, embeddings[ids] @ queries[0], rtol=1e-6)  # re-ranked exactly
    assert np.all(np.diff(scores) <= 0)
    flat = faiss.IndexFlatIP(16)
    flat.add(embeddings)
    assert (flat.search(queries, 10)[1] == exact).mean() > 0.99  # our exact search is FAISS's exact search
    np.save(tmp_path / ann.EMBEDDINGS_FILE, embeddings[:10])
    with pytest.raises(RetrievalError, match="rebuild the index"):
        ann.Searcher.open(tmp_path)


def test_exact_below_the_size_is_exact(tmp_path):
    embeddings, queries = mixture(500, 8, seed=1), mixture(5, 8, seed=2)
    np.save(tmp_path / ann.EMBEDDINGS_FILE, embeddings)
    ann.save(ann.build(embeddings), tmp_path / ann.INDEX_FILE)
    searcher = ann.Searcher.open(tmp_path)
    assert searcher.exact
    assert [searcher.search(q, 7)[1].tolist() for q in queries] == ann.exact_search(embeddings, queries, 7).tolist()


def _laion_folder(tmp_path, embeddings):
    """A clip-retrieval index folder: image.index (IVF), metadata in two parquet files of several row groups, and
    image files for every row under images/."""
    folder = tmp_path / "laion"
    (folder / "metadata").mkdir(parents=True)
    index = faiss.index_factory(embeddings.shape[1], "IVF4,Flat", faiss.METRIC_INNER_PRODUCT)
    index.train(embeddings)
    index.add(embeddings)
    index.nprobe = 4  # every list: exact, so the test knows the answer
    faiss.write_index(index, str(folder / "image.index"))
    (folder / "images").mkdir()
    rows = [{"url": f"http://example.com/{i}.jpg", "caption": f"caption {i}", "image_path": f"images/{i:04d}.png"}
            for i in range(len(embeddings))]
    for row in rows:
        Image.fromarray(solid("green", 4)).save(folder / row["image_path"])
    half = len(rows) // 2  # name order is id order: metadata_0 holds the first half
    for name, part in (("metadata_0.parquet", rows[:half]), ("metadata_1.parquet", rows[half:])):
        pq.write_table(pa.Table.from_pylist(part), folder / "metadata" / name, row_group_size=30)
    return folder


def test_a_laion_index_in_clip_retrieval_layout(tmp_path):
    embeddings = mixture(200, 16, seed=3, centres=10)
    folder = _laion_folder(tmp_path, embeddings)
    assert is_laion_index(folder) and not is_laion_index(tmp_path)
    index = LaionIndex(folder)
    assert index.metadata.num_rows == 200 and len(index.metadata.groups) == 8  # 2 files x 4 row groups
    assert index.metadata.rows([0, 99, 100, 137], ["caption"]) == [{"caption": f"caption {i}"} for i in
                                                                  (0, 99, 100, 137)]
    retriever = LaionRetriever(folder, clip_model=None, encoder=lambda prompt: embeddings[137])
    hits = retriever.retrieve("anything", 3)
    assert hits[0].caption == "caption 137" and hits[0].path.endswith("images/0137.png")
    assert hits[0].score == pytest.approx(1.0, abs=1e-5) and hits[0].image.shape == (4, 8, 3)
    want = ann.exact_search(embeddings, embeddings[137], 3)[0]
    assert [h.caption for h in hits] == [f"caption {i}" for i in want]
    with pytest.raises(RetrievalError, match="no 'key' column"):
        LaionRetriever(folder, clip_model=None, path_column="key", encoder=lambda p: embeddings[0])
    pq.write_table(pa.Table.from_pylist([{"caption": "extra"}]), folder / "metadata" / "metadata_2.parquet")
    with pytest.raises(RetrievalError, match="200 vectors but .* 201 rows"):
        LaionIndex(folder)


def test_a_laion_index_queried_through_clip_text_features(tmp_path, tiny_clip):
    from mvrag_jax.retrieval import dense
    model = dense.load_dual_encoder(tiny_clip)
    embeddings = mixture(120, model.projection_dim, seed=4, centres=6)
    embeddings[42] = dense.normalize(dense.text_features(model, ["a blue sphere"]))[0]
    folder = _laion_folder(tmp_path, embeddings)
    hits = LaionRetriever(folder, clip_model=str(tiny_clip)).retrieve("a blue sphere", 2)
    assert hits[0].caption == "caption 42" and hits[0].score == pytest.approx(1.0, abs=1e-4)


def test_a_dense_index_over_the_size_searches_with_faiss(collection, tiny_clip, tmp_path, monkeypatch):
    from mvrag_jax.retrieval import build_index, open_retriever
    monkeypatch.setattr(ann, "EXACT_BELOW", 1)  # 6 images: IVF cannot train on them, so the built index is Flat
    monkeypatch.setattr(ann, "factory_string", lambda n, d: "Flat")
    index = build_index(collection, tmp_path / "dense", kind="dense", clip_model=str(tiny_clip), show_progress=False)
    assert (index / ann.INDEX_FILE).is_file()
    with_faiss = open_retriever(index=str(index))
    assert with_faiss.searcher is not None
    hits = [(h.path, round(h.score, 5)) for h in with_faiss.retrieve("a red cube", 6)]
    (index / ann.INDEX_FILE).unlink()
    scan = open_retriever(index=str(index))
    assert scan.searcher is None and [(h.path, round(h.score, 5)) for h in scan.retrieve("a red cube", 6)] == hits
