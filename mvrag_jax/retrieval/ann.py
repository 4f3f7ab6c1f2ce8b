"""Approximate nearest neighbours for large dense indexes (FAISS), exact search below a size.

    index = build(embeddings)                  # [n, d] float32, L2-normalised; embeddings may be a np.memmap
    save(index, folder / INDEX_FILE)
    searcher = Searcher.open(folder)           # ann.faiss memory-mapped + embeddings.npy memory-mapped
    scores, ids = searcher.search(query, k)    # cosine similarity, best first

Below EXACT_BELOW vectors: `IndexFlatIP`, exact. Above: IVF-PQ (the family of LAION's published autofaiss indexes,
e.g. "OPQ256_768,IVF131072_HNSW32,PQ256x8" for LAION-5B ViT-L/14): NLIST_PER_SQRT x sqrt(n) inverted lists (a
power of two; more lists make queries cheaper and builds dearer), product codes of d/4 bytes per vector, and NPROBE lists visited per query. PQ codes alone rank
neighbours only roughly, so the top RERANK x k candidates are re-scored exactly against the float32 embeddings,
memory-mapped (the page cache holds the rows queries touch, not all of them): recall@10 >= 0.95 at 1M vectors with a
small index (bench/retrieval.py). HNSW (graph) indexes are the other choice FAISS offers; they keep every vector plus
its graph in memory, which is what IVF-PQ avoids at LAION scale, so we build IVF-PQ and read any FAISS index
(laion.py opens HNSW ones too).
"""

import dataclasses
import math
import pathlib

import numpy as np

from mvrag_jax.retrieval.base import RetrievalError

INDEX_FILE = "ann.faiss"
EMBEDDINGS_FILE = "embeddings.npy"  # the dense index's file (dense.py), re-used for re-ranking
EXACT_BELOW = 100_000
NLIST_PER_SQRT = 1  # FAISS's guide says 4-16 x sqrt(n); 1 x keeps k-means and list assignment (the build) 4x cheaper
NPROBE = 64
RERANK = 50  # PQ codes only roughly order the near neighbours of a cluster: re-score 50 k exactly
CHUNK = 100_000


def faiss():
    try:
        import faiss as module
    except ImportError as e:
        raise RetrievalError("dense indexes of 100,000+ images and LAION indexes use FAISS, which is not installed; "
                             "run `pip install -r requirements.txt` (it pins faiss-cpu)") from e
    return module


def factory_string(n: int, d: int) -> str:
    """The FAISS index for n vectors of width d (see the module docstring)."""
    if n < EXACT_BELOW:
        return "Flat"
    nlist = 2 ** round(math.log2(NLIST_PER_SQRT * math.sqrt(n)))
    nlist = min(nlist, 2 ** int(math.log2(n // 39)))  # FAISS wants >= 39 training points per list
    m = d // 4 if d % 4 == 0 else d // 2 if d % 2 == 0 else d
    return f"IVF{nlist},PQ{m}x8"


def build(embeddings: np.ndarray, *, description: str | None = None, seed: int = 0) -> "faiss.Index":
    """A FAISS inner-product index over `embeddings` [n, d] (added in chunks: a memmap is never read whole)."""
    lib = faiss()
    n, d = embeddings.shape
    description = description or factory_string(n, d)
    index = lib.index_factory(d, description, lib.METRIC_INNER_PRODUCT)
    if isinstance(index, lib.IndexIVFPQ):
        index.do_polysemous_training = False  # Hamming pre-filtering we never use; it was 95% of the build time
    if not index.is_trained:
        nlist = lib.extract_index_ivf(index).nlist
        size = min(n, max(64 * nlist, 256 * 39))  # k-means wants >= 39 points per list, the 256 PQ centroids too
        rows = np.sort(np.random.default_rng(seed).choice(n, size, replace=False))
        index.train(np.ascontiguousarray(embeddings[rows], np.float32))
    for start in range(0, n, CHUNK):
        index.add(np.ascontiguousarray(embeddings[start:start + CHUNK], np.float32))
    if hasattr(index, "nprobe"):
        index.nprobe = NPROBE
    else:
        try:
            lib.extract_index_ivf(index).nprobe = NPROBE
        except RuntimeError:
            pass  # not an IVF index (Flat, HNSW)
    return index


def save(index, path: pathlib.Path) -> None:
    """Write atomically (a reader never sees half an index)."""
    tmp = path.with_name(f".{path.name}.tmp")
    faiss().write_index(index, str(tmp))
    tmp.replace(path)


def read(path: pathlib.Path):
    """A FAISS index, memory-mapped where FAISS can (IVF lists, flat codes), else read into memory."""
    lib = faiss()
    try:
        return lib.read_index(str(path), lib.IO_FLAG_MMAP | lib.IO_FLAG_READ_ONLY)
    except RuntimeError:
        return lib.read_index(str(path))


def exact_search(embeddings: np.ndarray, queries: np.ndarray, k: int) -> np.ndarray:
    """Ids [q, k] of the k largest inner products of each query, exactly (chunked: a memmap is fine)."""
    queries = np.asarray(queries, np.float32).reshape(-1, embeddings.shape[1])
    best_scores = np.full((len(queries), 0), -np.inf, np.float32)
    best_ids = np.zeros((len(queries), 0), np.int64)
    for start in range(0, len(embeddings), CHUNK):
        scores = queries @ np.asarray(embeddings[start:start + CHUNK], np.float32).T  # [q, chunk]
        top = np.argpartition(-scores, min(k, scores.shape[1]) - 1, axis=1)[:, :k]
        best_scores = np.concatenate([best_scores, np.take_along_axis(scores, top, 1)], 1)
        best_ids = np.concatenate([best_ids, top + start], 1)
        keep = np.lexsort((best_ids, -best_scores), axis=1)[:, :k]  # by score, ties by id
        best_scores, best_ids = np.take_along_axis(best_scores, keep, 1), np.take_along_axis(best_ids, keep, 1)
    return best_ids


@dataclasses.dataclass
class Searcher:
    """A saved FAISS index with its embeddings (for exact re-ranking), both memory-mapped."""

    index: object
    embeddings: np.ndarray

    @classmethod
    def open(cls, folder: pathlib.Path) -> "Searcher":
        searcher = cls(read(folder / INDEX_FILE), np.load(folder / EMBEDDINGS_FILE, mmap_mode="r"))
        if searcher.index.ntotal != len(searcher.embeddings) or searcher.index.d != searcher.embeddings.shape[1]:
            raise RetrievalError(f"{folder}: {INDEX_FILE} holds {searcher.index.ntotal} x {searcher.index.d} vectors "
                                 f"but {EMBEDDINGS_FILE} {searcher.embeddings.shape}; rebuild the index")
        return searcher

    @property
    def description(self) -> str:
        return type(self.index).__name__ if not hasattr(self.index, "nlist") else \
            f"{type(self.index).__name__}(nlist={self.index.nlist}, nprobe={self.index.nprobe})"

    @property
    def exact(self) -> bool:
        return isinstance(self.index, faiss().IndexFlat)

    def search(self, query: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """(cosine similarities, ids) of the k nearest embeddings, best first, ties by id; approximate indexes
        re-rank RERANK x k candidates exactly."""
        query = np.asarray(query, np.float32).reshape(1, -1)
        want = k if self.exact else min(RERANK * k, self.index.ntotal)
        _, ids = self.index.search(query, want)
        ids = np.sort(ids[0][ids[0] >= 0])  # ascending: the memmap gather reads forward
        scores = np.asarray(self.embeddings[ids], np.float32) @ query[0]
        order = np.lexsort((ids, -scores))[:k]
        return scores[order], ids[order]
