"""BM25 postings on disk: built from a stream of analysed captions in bounded memory, read memory-mapped.

A folder (one shard: any index, or one part of a sharded one) holds
  terms.bin, term_offsets.npy   the vocabulary, UTF-8 terms sorted by their bytes, concatenated; term t is
                                terms.bin[term_offsets[t]:term_offsets[t + 1]] (looked up by binary search)
  indptr.npy      int64 [V + 1]  CSC over terms: term t's postings are [indptr[t], indptr[t + 1]), so df = the diff
  docs.npy        int32 [P]      document of each posting, ascending inside a term
  tfs.npy         int32 [P]      the term's frequency in that document
  lengths.npy     int32 [N]      analysed length of each document
  stats.json      {"documents": N, "total_length": sum of lengths, "postings": P, "terms": V}
Every array is opened with mmap_mode="r", so opening costs nothing and a query reads only the postings of its terms.

Scores are computed at query time from raw term frequencies, not stored: BM25's idf and average length are then
taken from the statistics of ALL shards together (`GlobalStats`), so N shards built independently score every
document exactly as one index over their union does (same float operations on the same inputs), and their merged
top-k is the one index's top-k. bm25s (the previous format) stores idf-weighted scores per shard, which ties each
shard to its own statistics.

Building: captions are analysed chunk by chunk; each chunk's (document, term, tf) triples go to a temporary file and
only the vocabulary (a dict of terms seen), the document frequencies and the lengths stay in memory. A second pass
scatters the triples into the preallocated, memory-mapped postings (counting sort by term: df gives every term's
slot, documents arrive in order). Peak memory grows with the vocabulary, not with the number of captions.
"""

import bisect
import dataclasses
import json
import math
import pathlib
import tempfile
from typing import Iterable, Sequence

import numpy as np
from mvrag_jax.errors import UsageError

STATS_FILE = "stats.json"
CHUNK_DOCS = 100_000  # captions analysed per chunk: ~10 MB of triples, so memory stays flat at any collection size


def _grow(array: np.ndarray, size: int) -> np.ndarray:
    if size <= len(array):
        return array
    out = np.zeros(max(size, 2 * len(array)), array.dtype)
    out[:len(array)] = array
    return out


def write_postings(folder: pathlib.Path, documents: Iterable[Sequence[str]], chunk_docs: int = CHUNK_DOCS) -> dict:
    """Write the postings of `documents` (each an analysed caption: a list of terms) into `folder`; returns stats."""
    folder.mkdir(parents=True, exist_ok=True)
    vocab: dict[str, int] = {}
    df = np.zeros(1024, np.int64)
    lengths: list[np.ndarray] = []
    with tempfile.TemporaryDirectory(prefix=".postings-", dir=folder) as scratch:
        chunks, n_docs = [], 0
        batch: list[Sequence[str]] = []

        def flush() -> None:
            nonlocal df, n_docs
            ids = [vocab.setdefault(term, len(vocab)) for doc in batch for term in doc]
            sizes = np.fromiter((len(doc) for doc in batch), np.int32, len(batch))
            doc_of = np.repeat(np.arange(n_docs, n_docs + len(batch), dtype=np.int64), sizes)
            ids = np.asarray(ids, np.int64)
            # Unique (document, term) pairs with their counts, document-major: key = doc * 2^32 + term.
            keys, tfs = np.unique((doc_of << 32) | ids, return_counts=True)
            terms = (keys & 0xFFFFFFFF).astype(np.int32)
            df = _grow(df, len(vocab))
            df[:len(vocab)] += np.bincount(terms, minlength=len(vocab))
            path = pathlib.Path(scratch) / f"chunk_{len(chunks):06d}.npz"
            np.savez(path, docs=(keys >> 32).astype(np.int32), terms=terms, tfs=tfs.astype(np.int32))
            chunks.append(path)
            lengths.append(sizes)
            n_docs += len(batch)
            batch.clear()

        for doc in documents:
            batch.append(doc)
            if len(batch) == chunk_docs:
                flush()
        if batch:
            flush()
        if n_docs >= 2 ** 31:
            raise ValueError(f"{n_docs} documents do not fit one shard's int32 ids; split the collection into shards")
        n_terms = len(vocab)
        df = df[:n_terms]
        # Term ids become ranks in byte order, so a reader finds a term by binary search over the mmapped vocabulary.
        words = sorted(vocab, key=lambda w: w.encode("utf-8"))
        rank = np.empty(n_terms, np.int64)
        rank[np.fromiter((vocab[w] for w in words), np.int64, n_terms)] = np.arange(n_terms)
        del vocab
        encoded = [w.encode("utf-8") for w in words]
        (folder / "terms.bin").write_bytes(b"".join(encoded))
        np.save(folder / "term_offsets.npy", np.concatenate([[0], np.cumsum([len(w) for w in encoded])]).astype(np.int64))
        del words, encoded
        sorted_df = np.zeros(n_terms, np.int64)
        sorted_df[rank] = df
        indptr = np.concatenate([[0], np.cumsum(sorted_df)]).astype(np.int64)
        np.save(folder / "indptr.npy", indptr)
        total = int(indptr[-1])
        docs = np.lib.format.open_memmap(folder / "docs.npy", "w+", np.int32, (total,))
        tfs = np.lib.format.open_memmap(folder / "tfs.npy", "w+", np.int32, (total,))
        cursor = indptr[:-1].copy()
        for path in chunks:
            with np.load(path) as chunk:
                terms = rank[chunk["terms"]]
                order = np.argsort(terms, kind="stable")  # by term; documents stay ascending inside each term
                terms = terms[order]
                counts = np.bincount(terms, minlength=n_terms)
                first = np.cumsum(counts) - counts  # index of each term's first entry in this sorted chunk
                slots = cursor[terms] + (np.arange(len(terms)) - first[terms])
                docs[slots] = chunk["docs"][order]
                tfs[slots] = chunk["tfs"][order]
                cursor += counts
            path.unlink()
        docs.flush()
        tfs.flush()
        del docs, tfs
    all_lengths = np.concatenate(lengths) if lengths else np.zeros(0, np.int32)
    np.save(folder / "lengths.npy", all_lengths)
    stats = {"documents": n_docs, "total_length": int(all_lengths.sum(dtype=np.int64)), "postings": total,
             "terms": n_terms}
    (folder / STATS_FILE).write_text(json.dumps(stats))
    return stats


class Postings:
    """One shard's postings, memory-mapped (see the module docstring for the files)."""

    def __init__(self, folder: pathlib.Path):
        self.folder = folder
        self.stats = json.loads((folder / STATS_FILE).read_text())
        load = lambda name: np.load(folder / name, mmap_mode="r")
        self.indptr, self.docs, self.tfs, self.lengths = (load(n) for n in ("indptr.npy", "docs.npy", "tfs.npy",
                                                                           "lengths.npy"))
        self.term_offsets = load("term_offsets.npy")
        size = (folder / "terms.bin").stat().st_size
        # np.memmap refuses an empty file (a collection of stop words only has no terms).
        self.terms = np.memmap(folder / "terms.bin", np.uint8, "r") if size else np.zeros(0, np.uint8)
        self.num_terms = len(self.term_offsets) - 1
        if len(self.lengths) != self.stats["documents"] or len(self.indptr) != self.num_terms + 1:
            raise UsageError(f"{folder}: postings files disagree with {STATS_FILE}")

    @property
    def num_docs(self) -> int:
        return int(self.stats["documents"])

    def _term(self, t: int) -> bytes:
        return self.terms[self.term_offsets[t]:self.term_offsets[t + 1]].tobytes()

    def term_id(self, term: str) -> int | None:
        key = term.encode("utf-8")
        t = bisect.bisect_left(range(self.num_terms), key, key=self._term)
        return t if t < self.num_terms and self._term(t) == key else None

    def df(self, term: str) -> int:
        t = self.term_id(term)
        return 0 if t is None else int(self.indptr[t + 1] - self.indptr[t])

    def length_norms(self, mean_length: float, k1: float, b: float) -> np.ndarray:
        """k1 (1 - b + b dl / avgdl) per document [n] float32, kept for the last statistics asked (4 bytes a
        document: one pass over the lengths at the first query instead of one per query term)."""
        key = (mean_length, k1, b)
        if getattr(self, "_norms_key", None) != key:
            lengths = np.asarray(self.lengths, np.float32)
            self._norms = np.float32(k1) * (np.float32(1 - b) + np.float32(b / mean_length) * lengths)
            self._norms_key = key
        return self._norms

    def postings(self, term: str) -> tuple[np.ndarray, np.ndarray]:
        """(documents, term frequencies) of `term`; empty when no document holds it."""
        t = self.term_id(term)
        if t is None:
            return np.zeros(0, np.int32), np.zeros(0, np.int32)
        start, end = int(self.indptr[t]), int(self.indptr[t + 1])
        return np.asarray(self.docs[start:end]), np.asarray(self.tfs[start:end])


@dataclasses.dataclass(frozen=True)
class GlobalStats:
    """The collection-wide BM25 statistics of a set of shards: N, average length and a term's df (summed)."""

    shards: tuple[Postings, ...]

    @property
    def num_docs(self) -> int:
        return sum(s.num_docs for s in self.shards)

    @property
    def mean_length(self) -> float:
        n = self.num_docs
        return sum(s.stats["total_length"] for s in self.shards) / n if n else 0.0

    def df(self, term: str) -> int:
        return sum(s.df(term) for s in self.shards)


def lucene_idf(n: int, df: int) -> float:
    """Lucene's BM25 idf (>= 8): log(1 + (N - df + 0.5) / (df + 0.5))."""
    return math.log(1 + (n - df + 0.5) / (df + 0.5))


def query_weights(terms: Sequence[str], stats: GlobalStats) -> list[tuple[str, float]]:
    """(term, idf x its count in the query) per distinct query term held by some document, in first-seen order
    (a repeated query term counts once per repeat, as bm25s and Lucene's BooleanQuery of repeated clauses do)."""
    n, weights = stats.num_docs, {}
    for term in terms:
        weights[term] = weights.get(term, 0) + 1
    out = []
    for term, count in weights.items():
        df = stats.df(term)
        if df:
            out.append((term, count * lucene_idf(n, df)))
    return out


def score_shard(shard: Postings, weights: Sequence[tuple[str, float]], mean_length: float, k1: float,
                b: float) -> np.ndarray:
    """BM25 (Lucene, without the constant (k1 + 1)) of every document of `shard` [n] float32; 0 where no term
    occurs. The same inputs give the same floats whichever shard a document lives in."""
    scores = np.zeros(shard.num_docs, np.float32)
    norms = shard.length_norms(mean_length, k1, b)
    for term, weight in weights:
        docs, tfs = shard.postings(term)
        if len(docs):
            tf = tfs.astype(np.float32)
            scores[docs] += np.float32(weight) * tf / (tf + norms[docs])
    return scores


def ranked(scores: np.ndarray, first: int) -> Iterable[int]:
    """Indices of the positive `scores`, best first, ties in index order (a stable sort of -scores), found lazily:
    the top `first`, then twice as many, and so on, so a query never sorts a million matches to read four."""
    positive = int(np.count_nonzero(scores > 0))
    done, want = 0, max(1, first)
    while done < positive:
        want = min(want, positive)
        if want == positive:
            top = np.flatnonzero(scores > 0)
        else:
            threshold = -np.partition(-scores, want - 1)[want - 1]  # the want-th largest score
            top = np.flatnonzero(scores >= threshold)  # every tie at the threshold, so the prefix is exact
        top = top[np.argsort(-scores[top], kind="stable")]
        yield from (int(i) for i in top[done:])
        done, want = len(top), 2 * len(top)
