"""Prompt-caption relevance of retrieved images: keep the hits at or above a threshold, K' <= K (paper §3.5).

    relevance = open_relevance(0.5, index="idx/bm25")                          # normalised BM25 (no extra model)
    relevance = open_relevance(0.8, index="idx/any", clip_model="/clip-vit-b32")  # CLIP text-text cosine
    judged = relevance.judge("a red cube", hits, retriever)   # judged.kept / judged.dropped: (hit, similarity)
    judged.record()                                           # the block `mvrag generate` writes to record.json

Paper §3.5: "We compute prompt-caption similarity and discard images below a threshold, yielding K' <= K images. If
no images pass the threshold, we disable retrieval-attention and fall back to the base model." The official code
(github yosefdayani/MV-RAG: main.py, pipeline_mvrag.py, retrievers/) has no threshold: it conditions on every image
its retriever returns, and `MVRAGPipeline.__call__` asserts at least one. So this follows the paper, and it is off
unless a threshold is given; the fallback is the caller's text-only path.

Measures (`MEASURES`: name -> the range a similarity, and so a threshold, lies in):
  clip  cosine of the CLIP text features (transformers' get_text_features, run by dense.py's loader and towers) of
        the prompt and the hit's caption, in [-1, 1]; works for hits of any index, since every record has a caption.
  bm25  the hit's BM25 score divided by the score the prompt gets against itself as a document of the same
        collection (BM25Retriever.self_score), clipped to [0, 1]. Raw BM25 grows with the number and rarity of the
        prompt's words, so one raw threshold would mean something else for every prompt; the ratio is the share of
        the prompt's own BM25 weight the caption matches (1: every word, as strongly as the prompt itself; a prompt
        word no caption holds still counts in the denominator, so a prompt about an unseen concept scores low). The
        other common choice, dividing by the top hit's score, would give the best hit 1 for every prompt, so no
        threshold could ever drop all hits and the paper's fallback would never happen. Only a BM25 index has these
        statistics: a dense index needs --relevance_clip.
"""

import dataclasses
import pathlib
from typing import Any, Callable, Sequence

import numpy as np

from mvrag_jax.retrieval.base import RetrievalError, RetrievedImage
from mvrag_jax.errors import PathNotFoundError

MEASURES = {"clip": (-1.0, 1.0), "bm25": (0.0, 1.0)}


class RelevanceError(RetrievalError):
    """A relevance threshold cannot apply as asked (out of range, wrong index kind); the message names the fix."""


def measure_of(clip_model: str | None) -> str:
    return "bm25" if clip_model is None else "clip"


def check_threshold(threshold: float, measure: str) -> float:
    low, high = MEASURES[measure]
    if not low <= threshold <= high:
        raise RelevanceError(f"--relevance_threshold {threshold}: the {measure} prompt-caption similarity lies in "
                             f"[{low:g}, {high:g}]; pass a threshold in that range")
    return float(threshold)


@dataclasses.dataclass(frozen=True)
class Judgement:
    """One prompt's hits split by the threshold, best first, each with its similarity (None: not scored)."""

    threshold: float
    measure: str
    kept: tuple[tuple[RetrievedImage, float | None], ...]
    dropped: tuple[tuple[RetrievedImage, float | None], ...]
    applied: bool = True

    @property
    def fell_back(self) -> bool:
        """Every hit was dropped: the object runs text-only (the base model)."""
        return not self.kept

    def record(self) -> dict[str, Any]:
        entry = lambda hit, similarity: {"path": hit.path, "caption": hit.caption, "similarity": similarity}
        return {"threshold": self.threshold, "measure": self.measure, "applied": self.applied,
                "kept": [entry(*pair) for pair in self.kept], "dropped": [entry(*pair) for pair in self.dropped],
                "fell_back": self.fell_back}


@dataclasses.dataclass(frozen=True)
class Relevance:
    """A threshold and the measure it applies to; `similarities(prompt, hits, retriever) -> [len(hits)]`."""

    threshold: float
    measure: str
    similarities: Callable[[str, Sequence[RetrievedImage], Any], np.ndarray]

    def judge(self, prompt: str, hits: Sequence[RetrievedImage], retriever: Any) -> Judgement:
        """Split `hits` (from `retriever`, which the bm25 measure reads its statistics from) at the threshold."""
        pairs = [(hit, float(s)) for hit, s in zip(hits, self.similarities(prompt, hits, retriever))]
        return Judgement(self.threshold, self.measure, tuple(p for p in pairs if p[1] >= self.threshold),
                         tuple(p for p in pairs if p[1] < self.threshold))

    def unjudged(self, hits: Sequence[RetrievedImage]) -> Judgement:
        """Hits without captions (a folder's images): all kept, none scored."""
        return Judgement(self.threshold, self.measure, tuple((hit, None) for hit in hits), (), applied=False)


def bm25_similarities(prompt: str, hits: Sequence[RetrievedImage], retriever: Any) -> np.ndarray:
    """Each hit's BM25 score over `retriever.self_score(prompt)`, clipped to [0, 1] (0 for a prompt with no terms)."""
    best = retriever.self_score(prompt)
    scores = np.asarray([hit.score for hit in hits], np.float64)
    return np.clip(scores / best, 0.0, 1.0) if best > 0 else np.zeros(len(hits))


def clip_similarities(model: Any) -> Callable[[str, Sequence[RetrievedImage], Any], np.ndarray]:
    """Cosine of CLIP text features of the prompt and each hit's caption. Texts run one at a time: one compiled
    shape [1, 77] for any number of hits."""
    from mvrag_jax.retrieval.dense import normalize, text_features

    def similarities(prompt: str, hits: Sequence[RetrievedImage], retriever: Any) -> np.ndarray:
        del retriever  # captions only
        features = normalize(np.concatenate([text_features(model, [text]) for text in
                                             [prompt] + [hit.caption or "" for hit in hits]]))
        return features[1:] @ features[0]

    return similarities


def open_relevance(threshold: float, *, index: str | pathlib.Path | None = None,
                   clip_model: str | pathlib.Path | None = None) -> Relevance:
    """The threshold for the hits of `index`: CLIP text-text with `clip_model` (a transformers CLIPModel folder),
    else normalised BM25, which needs a BM25 index. Checks the threshold's range before loading anything."""
    measure = measure_of(clip_model)
    threshold = check_threshold(threshold, measure)
    if clip_model is not None:
        folder = pathlib.Path(clip_model).expanduser().absolute()
        if not folder.is_dir():
            raise PathNotFoundError(f"--relevance_clip {folder} does not exist; pass a transformers CLIPModel folder "
                                    "(or drop the flag to use normalised BM25 with a BM25 index)")
        from mvrag_jax.retrieval.dense import load_dual_encoder
        return Relevance(threshold, measure, clip_similarities(load_dual_encoder(folder)))
    from mvrag_jax.retrieval.index import read_manifest
    index, manifest = read_manifest(index)
    if manifest["kind"] != "bm25":
        model = manifest.get(manifest["kind"], {}).get("clip_model")
        raise RelevanceError(f"index {index} is a {manifest['kind']} index: it has no BM25 statistics to normalise "
                             f"by; pass --relevance_clip DIR for CLIP caption similarity (e.g. its model {model})")
    return Relevance(threshold, measure, bm25_similarities)
