"""BM25 over captions with the settings of the official retriever (Pyserini's LuceneSearcher), on bm25s.

The official retriever (retrievers/bm25_retriever.py) opens `LuceneSearcher(index)` and never calls `set_bm25`, so it
scores with Anserini's defaults, BM25 k1=0.9, b=0.4 (SearchCollection.Args, which SimpleSearcher's constructor
reads), and analyses text with Anserini's default English analyzer: StandardTokenizer, possessive 's removed,
lower-casing, Lucene's 33 English stop words, Porter stemming. Ties are broken by docid (here: the image path).
We reproduce that:
  * scores: Lucene's BM25 as bm25s' method "lucene" computes it (idf = log(1 + (N - df + 0.5) / (df + 0.5)), tf / (tf + k1 (1 - b + b dl/avgdl)),
    Lucene >= 8 without the constant (k1 + 1) factor); documents that share no term with the query are not hits;
  * analysis: `analyze` below. Words are \\w+ runs (StandardTokenizer's word boundaries for plain text; it differs on
    e.g. "3.5", one token in Lucene); the stop words are bm25s' STOPWORDS_EN, which is exactly Lucene's list; the
    stemmer is Snowball "porter" from PyStemmer (the original Porter algorithm, as Lucene's PorterStemFilter).
The official code passes `prompt.lower` uncalled (a bug: the method object, not the text); we lower-case properly.

Scale (LAION-400M is the paper's collection): postings.py stores raw term frequencies, memory-mapped, built in
bounded memory; scores are computed per query from the statistics of every shard together, so an index may be N
shards built independently (one per host of a job: `build_index(..., num_shards=N, shard_index=i)` or any N
ordinary indexes, joined by `join_shards`) and its merged top-k equals the one index over their union, ties included
(ties break by image path across shards too).
"""

import concurrent.futures
import dataclasses
import heapq
import logging
import math
import pathlib
import re
from typing import Any, Callable, Iterable, Iterator, Sequence

import numpy as np

from mvrag_jax.retrieval import postings as postings_lib
from mvrag_jax.retrieval.base import Candidate, RetrievalError, RetrievedImage, collect
from mvrag_jax.retrieval.collection import CollectionRecord, RecordFile

_LOG = logging.getLogger(__name__)

K1, B = 0.9, 0.4           # Anserini/Pyserini LuceneSearcher defaults (the paper's retriever)
METHOD = "lucene"
STEMMER = "porter"
ANALYZER = "lucene-english-v1"  # stamp of `analyze`; an index built with another analyzer must be rebuilt
LAYOUT = "postings-1"  # postings.py's files; indexes of the earlier bm25s layout (no "layout") must be rebuilt
POSTINGS_FOLDER = "postings"
_WORDS = re.compile(r"\w+")
_POSSESSIVE = re.compile(r"(?<=\w)['\u2019]s\b")  # Lucene's EnglishPossessiveFilter: "car's" -> "car"


def _bm25s():
    """The bm25s module, with its logger back at WARNING (bm25s sets it to DEBUG at import, which prints one line
    per index build wherever a root handler exists)."""
    import bm25s
    logging.getLogger("bm25s").setLevel(logging.WARNING)
    return bm25s


def make_stemmer() -> Callable[[list[str]], list[str]]:
    try:
        import Stemmer
    except ImportError as e:
        raise RetrievalError("BM25 retrieval stems words with PyStemmer, which is not installed; run "
                             "`pip install -r requirements.txt` (it pins PyStemmer)") from e
    return Stemmer.Stemmer(STEMMER).stemWords


def analyze(text: str, stem: Callable[[list[str]], list[str]]) -> list[str]:
    """Caption or prompt -> index terms: 'A Red Car's wheels' -> ['red', 'car', 'wheel']."""
    from bm25s.stopwords import STOPWORDS_EN  # Lucene's EnglishAnalyzer stop set, word for word
    words = _WORDS.findall(_POSSESSIVE.sub("", text.lower()))
    return stem([w for w in words if w not in STOPWORDS_EN])


class Analyzer:
    """`analyze` for millions of captions: each distinct word is looked up in the stop set and stemmed once (web
    captions repeat their words: Zipf), which makes indexing ~3x faster; same terms as `analyze`."""

    MEMO_LIMIT = 2_000_000  # distinct words remembered; the memo is emptied past it, so memory stays bounded

    def __init__(self):
        from bm25s.stopwords import STOPWORDS_EN
        self.stem, self.stop, self.memo = make_stemmer(), frozenset(STOPWORDS_EN), {}

    def __call__(self, text: str) -> list[str]:
        text = text.lower()
        if "'" in text or "\u2019" in text:
            text = _POSSESSIVE.sub("", text)
        memo, out = self.memo, []
        for word in _WORDS.findall(text):
            term = memo.get(word, _UNSEEN)
            if term is _UNSEEN:
                if len(memo) >= self.MEMO_LIMIT:
                    memo.clear()
                term = memo[word] = None if word in self.stop else self.stem([word])[0]
            if term is not None:
                out.append(term)
        return out


_UNSEEN = object()


def write_index(folder: pathlib.Path, records: Iterable[CollectionRecord], show_progress: bool = False) -> dict:
    """Index the captions of `records` (a stream, sorted by image path) into folder/postings; returns the manifest
    block."""
    analyzer = Analyzer()
    stats = postings_lib.write_postings(folder / POSTINGS_FOLDER, (analyzer(r.caption) for r in records))
    return {**settings(), "terms": stats["terms"], "postings": stats["postings"]}


def settings() -> dict[str, Any]:
    """What a BM25 manifest block must hold for this version to read the index (shards must agree on it)."""
    return {"k1": K1, "b": B, "method": METHOD, "analyzer": ANALYZER, "stemmer": STEMMER, "layout": LAYOUT}


def check_settings(index_dir: pathlib.Path, block: dict[str, Any]) -> None:
    if block.get("analyzer") != ANALYZER:
        raise RetrievalError(f"index {index_dir} was built with analyzer {block.get('analyzer')!r}, this "
                             f"version uses {ANALYZER!r}; rebuild it with `mvrag index --overwrite`")
    if block.get("layout") != LAYOUT:
        raise RetrievalError(f"index {index_dir} uses the BM25 layout {block.get('layout', 'bm25s')!r}, this version "
                             f"reads {LAYOUT!r} (memory-mapped postings); rebuild it with `mvrag index --overwrite`")


@dataclasses.dataclass(frozen=True)
class Shard:
    """One ordinary BM25 index folder: its records (read lazily), image root and postings."""

    index_dir: pathlib.Path
    root: pathlib.Path
    records: Sequence[CollectionRecord]
    postings: postings_lib.Postings

    @classmethod
    def open(cls, index_dir: pathlib.Path, manifest: dict[str, Any], root: pathlib.Path, records_file: str):
        check_settings(index_dir, manifest.get("bm25", {}))
        records = RecordFile(index_dir / records_file)
        shard = cls(index_dir, root, records, postings_lib.Postings(index_dir / POSTINGS_FOLDER))
        if shard.postings.num_docs != len(records):
            raise RetrievalError(f"index {index_dir} is inconsistent ({shard.postings.num_docs} BM25 documents, "
                                 f"{len(records)} records); rebuild it with `mvrag index --overwrite`")
        return shard


class BM25Retriever:
    """Top-k images by BM25 of their captions over one or more shards (scored with the statistics of all of them);
    missing files are skipped and lower hits fill their place."""

    def __init__(self, index_dir: pathlib.Path, shards: Sequence[Shard]):
        self.index_dir, self.shards = index_dir, tuple(shards)
        self.stats = postings_lib.GlobalStats(tuple(s.postings for s in self.shards))
        self.stem = make_stemmer()

    @property
    def num_docs(self) -> int:
        return self.stats.num_docs

    @property
    def mean_length(self) -> float:
        """Mean analysed caption length over every shard (bm25s' and Lucene's avgdl)."""
        return self.stats.mean_length

    def _weights(self, prompt: str) -> list[tuple[str, float]]:
        return postings_lib.query_weights(analyze(prompt, self.stem), self.stats)

    def _shard_scores(self, weights: list[tuple[str, float]]) -> list[np.ndarray]:
        score = lambda shard: postings_lib.score_shard(shard.postings, weights, self.mean_length, K1, B)
        if len(self.shards) == 1:
            return [score(self.shards[0])]
        # Shards are scored in parallel (numpy's gathers and arithmetic release the GIL), then merged.
        with concurrent.futures.ThreadPoolExecutor(min(len(self.shards), 8)) as pool:
            return list(pool.map(score, self.shards))

    def scores(self, prompt: str) -> np.ndarray:
        """BM25 score of every record for `prompt` [n], shards one after another (0 where no query term occurs)."""
        weights = self._weights(prompt)
        if not weights:
            return np.zeros(self.num_docs, np.float32)
        return np.concatenate(self._shard_scores(weights))

    def self_score(self, prompt: str) -> float:
        """The BM25 score `prompt` would get against itself as a document of this collection (its N, document
        frequencies and mean length); a term no caption holds counts with df 0. Query terms are summed with their
        repeats, as `scores` does. Used to normalise hit scores (retrieval/relevance.py)."""
        terms = analyze(prompt, self.stem)
        if not terms or self.mean_length == 0:
            return 0.0
        n, total = self.num_docs, 0.0
        norm = K1 * (1 - B + B * len(terms) / self.mean_length)
        counts = {term: terms.count(term) for term in terms}
        for term in terms:
            total += postings_lib.lucene_idf(n, self.stats.df(term)) * counts[term] / (counts[term] + norm)
        return total

    def ranked(self, prompt: str, k: int) -> Iterator[tuple[float, Shard, int]]:
        """(score, shard, record index) of every matching record, best first; ties by image path across shards
        (within a shard records are stored sorted by path, so its own order already breaks ties so)."""
        weights = self._weights(prompt)
        if not weights:
            return iter(())
        streams = [_stream(n, shard, scores, k) for n, (shard, scores)
                   in enumerate(zip(self.shards, self._shard_scores(weights)))]
        if len(streams) == 1:
            return ((-neg, self.shards[0], i) for neg, _, _, i in streams[0])
        return ((-neg, self.shards[n], i) for neg, _, n, i in heapq.merge(*streams))

    def retrieve(self, prompt: str, k: int) -> list[RetrievedImage]:
        candidates = (Candidate(shard.root / shard.records[i].image, score, shard.records[i].caption)
                      for score, shard, i in self.ranked(prompt, k))
        return collect(candidates, k, empty_message=(
            f"no caption in index {self.index_dir} shares a word with {prompt!r} (after stop words and stemming); "
            "rephrase the prompt, add captions to the collection, or generate without retrieval"))


def _stream(n: int, shard: Shard, scores: np.ndarray, k: int) -> Iterator[tuple[float, str, int, int]]:
    """(-score, image path, shard number, record index) of one shard's matches, in the order heapq.merge needs."""
    for i in postings_lib.ranked(scores, k):
        yield -float(scores[i]), shard.records[i].image, n, i
