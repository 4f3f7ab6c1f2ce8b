"""`mvrag bench retrieval`: build and query a retrieval index of N synthetic captions (BM25) or embeddings (dense).

    mvrag bench retrieval --docs 1000000 --kind bm25 --json      # build s, query ms (median, p90), peak RSS
    mvrag bench retrieval --docs 1000000 --kind dense --dim 64 --json   # + recall@10 against exact search

BM25 runs the real path: a collection.jsonl of N captions (no image files: retrieval is timed up to the ranked
records, before any image is read) -> `build_index` -> `open_index` -> `BM25Retriever.ranked`. Captions are
LAION-like: 4-16 words drawn from a Zipf(1.1) law over a 200,000-word vocabulary, so a few words are in most
captions and most words are rare, as in web alt-text; prompts are 2-4 words from the same law. Build and query each
run in a fresh process, so each peak RSS (ru_maxrss of that process, interpreter and imports included) is its own.

Dense: N embeddings of a Gaussian mixture (CLIP embeddings cluster by concept; i.i.d. uniform vectors, where every
point is about as far from every other, would measure nothing real), L2-normalised; queries are held-out points of
the same mixture. `ann.build` picks exact search below `ann.EXACT_BELOW` and IVF-PQ with exact re-ranking above;
recall@10 is against an exact inner-product search of the same vectors.
"""

import json
import multiprocessing
import os
import pathlib
import resource
import statistics
import tempfile
import time
from typing import Any, Callable

import numpy as np
from mvrag_jax.errors import UsageError

VOCAB = 200_000
ZIPF = 1.1


def _rss_bytes() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux reports KiB


def _words(rng: np.random.Generator, count: int) -> np.ndarray:
    """Word ranks in [0, VOCAB), Zipf-distributed (rank 0 the most common)."""
    ranks = rng.zipf(ZIPF, size=count * 2)
    ranks = ranks[ranks <= VOCAB][:count] - 1
    while len(ranks) < count:  # the truncated tail is rare; top up
        more = rng.zipf(ZIPF, size=count)
        ranks = np.concatenate([ranks, more[more <= VOCAB][:count - len(ranks)] - 1])
    return ranks


def _word(rank: int) -> str:
    """A stable pseudo-word per rank: letters only, so the analyzer keeps it (stemming may shorten it)."""
    letters, out, n = "bcdfghjklmnpqrstvwxz", [], rank + 1
    while n:
        n, r = divmod(n, 20)
        out.append(letters[r] + "aeiou"[(n + r) % 5])
    return "".join(out)


def captions(n: int, seed: int = 0, chunk: int = 100_000):
    """N synthetic captions, made chunk by chunk (memory stays flat)."""
    rng, table = np.random.default_rng(seed), np.asarray([_word(r) for r in range(VOCAB)], object)
    for start in range(0, n, chunk):
        lengths = rng.integers(4, 17, min(chunk, n - start))
        words = table[_words(rng, int(lengths.sum()))].tolist()
        ends = np.cumsum(lengths).tolist()
        for begin, end in zip([0] + ends[:-1], ends):
            yield " ".join(words[begin:end])


def prompts(count: int, seed: int = 1) -> list[str]:
    rng = np.random.default_rng(seed)
    return [" ".join(_word(int(r)) for r in _words(rng, int(rng.integers(2, 5)))) for _ in range(count)]


def write_collection_file(path: pathlib.Path, n: int) -> None:
    """collection.jsonl of n captions; image paths zero-padded, so file order is path order."""
    with open(path, "w", encoding="utf-8") as f:
        for i, caption in enumerate(captions(n)):
            f.write(json.dumps({"image": f"images/{i // 10_000:05d}/{i:09d}.jpg", "caption": caption}) + "\n")


def _in_child(fn: Callable[..., dict], *args) -> dict:
    """Run fn(*args) in a fresh spawned process; returns its figures plus that process's peak RSS."""
    context = multiprocessing.get_context("spawn")
    with context.Pool(1) as pool:
        return pool.apply(_measured, (fn, *args))


def _measured(fn: Callable[..., dict], *args) -> dict:
    figures = fn(*args)
    return {**figures, "peak_rss_bytes": _rss_bytes()}


def _build_bm25(collection: str, out: str, num_shards: int) -> dict:
    import logging
    logging.getLogger("mvrag_jax.retrieval.index").setLevel(logging.ERROR)  # "N images missing": none are written
    from mvrag_jax.retrieval.index import build_index
    began = time.perf_counter()
    build_index(collection, out, show_progress=False, num_shards=num_shards)
    return {"build_s": time.perf_counter() - began}


def _query_bm25(index: str, queries: list[str], k: int) -> dict:
    import itertools
    from mvrag_jax.retrieval.index import open_index
    began = time.perf_counter()
    retriever = open_index(index)
    open_s = time.perf_counter() - began
    times, matched = [], 0
    for prompt in queries:
        began = time.perf_counter()
        hits = [(score, shard.records[i].image) for score, shard, i in itertools.islice(retriever.ranked(prompt, k), k)]
        times.append(time.perf_counter() - began)
        matched += bool(hits)
    return {"open_s": open_s, **_latency(times), "queries_with_hits": matched}


def _latency(times: list[float]) -> dict:
    ordered = sorted(times)
    return {"queries": len(times), "query_median_s": statistics.median(times),
            "query_p90_s": ordered[int(0.9 * (len(ordered) - 1))], "query_mean_s": statistics.fmean(times)}


def _disk_bytes(folder: pathlib.Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


def bench_bm25(docs: int, *, queries: int = 200, k: int = 10, num_shards: int = 1,
               workdir: str | None = None) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="mvrag-bench-retrieval-", dir=workdir) as scratch:
        scratch = pathlib.Path(scratch)
        began = time.perf_counter()
        write_collection_file(scratch / "collection.jsonl", docs)
        generate_s = time.perf_counter() - began
        build = _in_child(_build_bm25, str(scratch / "collection.jsonl"), str(scratch / "idx"), num_shards)
        (scratch / "collection.jsonl").unlink()  # the index does not need it any more; frees the disk
        query = _in_child(_query_bm25, str(scratch / "idx"), prompts(queries), k)
        return {"kind": "bm25", "docs": docs, "num_shards": num_shards, "k": k, "generate_s": generate_s,
                "build_s": build["build_s"], "build_peak_rss_bytes": build["peak_rss_bytes"],
                "index_disk_bytes": _disk_bytes(scratch / "idx"),
                **{key: value for key, value in query.items() if key != "peak_rss_bytes"},
                "query_peak_rss_bytes": query["peak_rss_bytes"]}


def mixture(n: int, dim: int, seed: int, centres: int = 1000, spread: float = 0.35) -> np.ndarray:
    """n L2-normalised points [n, dim] float32 of one Gaussian mixture around `centres` random unit directions
    (the same for every seed); `seed` draws the points."""
    means = np.random.default_rng(12345).standard_normal((centres, dim)).astype(np.float32)
    rng = np.random.default_rng(seed)
    means /= np.linalg.norm(means, axis=1, keepdims=True)
    out = np.empty((n, dim), np.float32)
    for start in range(0, n, 100_000):
        size = min(100_000, n - start)
        points = means[rng.integers(0, centres, size)] + spread / np.sqrt(dim) * rng.standard_normal(
            (size, dim)).astype(np.float32)
        out[start:start + size] = points / np.linalg.norm(points, axis=1, keepdims=True)
    return out


def _dense(folder: str, docs: int, dim: int, queries: int, k: int) -> dict:
    from mvrag_jax.retrieval import ann
    embeddings = np.load(pathlib.Path(folder) / "embeddings.npy", mmap_mode="r")
    began = time.perf_counter()
    index = ann.build(embeddings)
    build_s = time.perf_counter() - began
    ann.save(index, pathlib.Path(folder) / ann.INDEX_FILE)
    del index
    searcher = ann.Searcher.open(pathlib.Path(folder))
    queries_ = mixture(queries, dim, seed=7)  # held out: new points of the same mixture
    times, found = [], []
    for q in queries_:
        began = time.perf_counter()
        found.append(searcher.search(q, k)[1])
        times.append(time.perf_counter() - began)
    exact = ann.exact_search(embeddings, queries_, k)
    recall = float(np.mean([len(set(f.tolist()) & set(e.tolist())) / k for f, e in zip(found, exact)]))
    return {"build_s": build_s, "index": searcher.description, "recall_at_k": recall,
            "index_bytes": (pathlib.Path(folder) / ann.INDEX_FILE).stat().st_size, **_latency(times)}


def bench_dense(docs: int, *, dim: int = 64, queries: int = 200, k: int = 10, workdir: str | None = None) -> dict:
    with tempfile.TemporaryDirectory(prefix="mvrag-bench-dense-", dir=workdir) as scratch:
        began = time.perf_counter()
        np.save(pathlib.Path(scratch) / "embeddings.npy", mixture(docs, dim, seed=0))
        generate_s = time.perf_counter() - began
        figures = _in_child(_dense, scratch, docs, dim, queries, k)
        return {"kind": "dense", "docs": docs, "dim": dim, "k": k, "generate_s": generate_s,
                "embeddings_bytes": docs * dim * 4, **figures}


def bench_retrieval(docs: int, kind: str = "bm25", **options) -> dict[str, Any]:
    if isinstance(docs, bool) or not isinstance(docs, int) or docs < 1:
        raise UsageError(f"--docs {docs!r}: pass a positive number of captions/embeddings to index")
    if kind not in ("bm25", "dense"):
        raise UsageError(f"--kind {kind!r}: choose bm25 or dense")
    figures = bench_bm25(docs, **options) if kind == "bm25" else bench_dense(docs, **options)
    return {**figures, "cpu_count": os.cpu_count(), "load_average": os.getloadavg()}
