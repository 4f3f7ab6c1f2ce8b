"""BM25 over captions with the settings of the official retriever (Pyserini's LuceneSearcher), on bm25s.

The official retriever (retrievers/bm25_retriever.py) opens `LuceneSearcher(index)` and never calls `set_bm25`, so it
scores with Anserini's defaults, BM25 k1=0.9, b=0.4 (SearchCollection.Args, which SimpleSearcher's constructor
reads), and analyses text with Anserini's default English analyzer: StandardTokenizer, possessive 's removed,
lower-casing, Lucene's 33 English stop words, Porter stemming. Ties are broken by docid (here: the image path).
We reproduce that:
  * scores: bm25s method "lucene" (idf = log(1 + (N - df + 0.5) / (df + 0.5)), tf / (tf + k1 (1 - b + b dl/avgdl)),
    Lucene >= 8 without the constant (k1 + 1) factor); documents that share no term with the query are not hits;
  * analysis: `analyze` below. Words are \\w+ runs (StandardTokenizer's word boundaries for plain text; it differs on
    e.g. "3.5", one token in Lucene); the stop words are bm25s' STOPWORDS_EN, which is exactly Lucene's list; the
    stemmer is Snowball "porter" from PyStemmer (the original Porter algorithm, as Lucene's PorterStemFilter).
The official code passes `prompt.lower` uncalled (a bug: the method object, not the text); we lower-case properly.
"""

import collections
import functools
import logging
import math
import pathlib
import re
from typing import Any, Callable, Sequence

import numpy as np

from mvrag_jax.retrieval.base import Candidate, RetrievalError, RetrievedImage, collect
from mvrag_jax.retrieval.collection import CollectionRecord

_LOG = logging.getLogger(__name__)

K1, B = 0.9, 0.4           # Anserini/Pyserini LuceneSearcher defaults (the paper's retriever)
METHOD = "lucene"
STEMMER = "porter"
ANALYZER = "lucene-english-v1"  # stamp of `analyze`; an index built with another analyzer must be rebuilt
BM25_FOLDER = "bm25"
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


def write_index(folder: pathlib.Path, records: Sequence[CollectionRecord]) -> dict[str, Any]:
    """Index the captions of `records` into folder/bm25; returns the manifest block."""
    stem = make_stemmer()
    model = _bm25s().BM25(k1=K1, b=B, method=METHOD)
    model.index([analyze(r.caption, stem) for r in records], show_progress=False)
    model.save(str(folder / BM25_FOLDER), show_progress=False)
    return {"k1": K1, "b": B, "method": METHOD, "analyzer": ANALYZER, "stemmer": STEMMER}


class BM25Retriever:
    """Top-k images by BM25 of their captions; missing files are skipped and lower hits fill their place."""

    def __init__(self, index_dir: pathlib.Path, manifest: dict[str, Any], root: pathlib.Path,
                 records: Sequence[CollectionRecord]):
        settings = manifest.get("bm25", {})
        if settings.get("analyzer") != ANALYZER:
            raise RetrievalError(f"index {index_dir} was built with analyzer {settings.get('analyzer')!r}, this "
                                 f"version uses {ANALYZER!r}; rebuild it with `mvrag index --overwrite`")
        self.index_dir, self.root, self.records = index_dir, root, list(records)
        self.stem = make_stemmer()
        self.model = _bm25s().BM25.load(str(index_dir / BM25_FOLDER), show_progress=False)
        if self.model.scores["num_docs"] != len(self.records):
            raise RetrievalError(f"index {index_dir} is inconsistent ({self.model.scores['num_docs']} BM25 documents, "
                                 f"{len(self.records)} records); rebuild it with `mvrag index --overwrite`")

    def scores(self, prompt: str) -> np.ndarray:
        """BM25 score of every record for `prompt` [n] (0 where no query term occurs)."""
        ids = self.model.get_tokens_ids(analyze(prompt, self.stem))
        if not ids:
            return np.zeros(len(self.records), np.float32)
        return np.asarray(self.model.get_scores_from_ids(ids))

    @functools.cached_property
    def mean_length(self) -> float:
        """Mean analysed caption length (bm25s' avgdl: records.jsonl holds exactly the indexed captions)."""
        return float(np.mean([len(analyze(r.caption, self.stem)) for r in self.records])) if self.records else 0.0

    def self_score(self, prompt: str) -> float:
        """The BM25 score `prompt` would get against itself as a document of this collection (its N, document
        frequencies and mean length); a term no caption holds counts with df 0. Query terms are summed with their
        repeats, as `scores` does. Used to normalise hit scores (retrieval/relevance.py)."""
        terms = analyze(prompt, self.stem)
        if not terms or self.mean_length == 0:
            return 0.0
        indptr = self.model.scores["indptr"]  # CSC over the vocabulary: a column's entries are its documents
        n, counts = len(self.records), collections.Counter(terms)
        norm = K1 * (1 - B + B * len(terms) / self.mean_length)
        total = 0.0
        for term in terms:
            token = self.model.vocab_dict.get(term)
            df = 0 if token is None else int(indptr[token + 1] - indptr[token])
            total += math.log(1 + (n - df + 0.5) / (df + 0.5)) * counts[term] / (counts[term] + norm)
        return total

    def retrieve(self, prompt: str, k: int) -> list[RetrievedImage]:
        scores = self.scores(prompt)
        matched = np.flatnonzero(scores > 0)
        # Records are stored sorted by image path, so a stable sort breaks ties by path as Anserini does by docid.
        order = matched[np.argsort(-scores[matched], kind="stable")]
        candidates = (Candidate(self.root / self.records[i].image, float(scores[i]), self.records[i].caption)
                      for i in order)
        return collect(candidates, k, empty_message=(
            f"no caption in index {self.index_dir} shares a word with {prompt!r} (after stop words and stemming); "
            "rephrase the prompt, add captions to the collection, or generate without retrieval"))
