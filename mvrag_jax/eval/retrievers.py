"""`mvrag eval --study retrievers`: the paper's Table 4, Precision@5 of four retrievers for the evaluation prompts over a
combined collection (the evaluation set's images among distractors; the paper: OOD-Eval among MS-COCO).

Input, one folder:

    collection.jsonl   {"image": path, "caption": ..., "prompt_id": id | null}  every image of the combined
                       collection (--collection points at this file); prompt_id names the evaluation prompt the image
                       belongs to (its relevant set), null (or absent) for distractors
    queries.jsonl      {"prompt_id": ..., "prompt": ...}                          beside it: the queries

Retrievers (the same settings as inference's, retrieval/): BM25 over the captions (Pyserini's k1 0.9, b 0.4, Lucene
English analysis); CLIP text->image (prompt text features against image features); CLIP text->text (prompt against
caption text features); SigLIP text->image. Precision@5 of a query = the share of its top 5 that belong to it; the
figure is the mean over queries, with a bootstrap 95 % interval. A retriever without its model is reported missing.
Unreadable images are an error (they would silently change the denominator).
"""

import json
import pathlib
from typing import Any

import numpy as np
from PIL import Image

from mvrag_jax.convert.checkpoint import atomic_directory
from mvrag_jax.eval import metrics
from mvrag_jax.retrieval import bm25
from mvrag_jax.retrieval.collection import read_collection
from mvrag_jax.errors import PathNotFoundError, UsageError

TOP = 5
RETRIEVERS = ("bm25", "clip_text_image", "clip_text_text", "siglip_text_image")
LABELS = {"bm25": "BM25 (captions)", "clip_text_image": "CLIP text->image", "clip_text_text": "CLIP text->text",
          "siglip_text_image": "SigLIP text->image"}
PAPER = {"clip_text_image": 0.5366, "clip_text_text": 0.7306, "siglip_text_image": 0.7889, "bm25": 0.8522}


def precision_at(scores: np.ndarray, relevant: np.ndarray, k: int = TOP) -> float:
    """Share of the k best-scored items that are relevant (ties broken by collection order)."""
    top = np.argsort(-np.asarray(scores, np.float64), kind="stable")[:k]
    return float(np.mean(relevant[top]))


def read_study(collection: str | pathlib.Path) -> tuple[pathlib.Path, list, list[str | None], list[dict]]:
    """(root, records, prompt_id per record, queries)."""
    root, records = read_collection(collection)
    path = pathlib.Path(collection).expanduser().absolute()
    groups = [json.loads(line).get("prompt_id") for line in path.read_text(encoding="utf-8").splitlines()
              if line.strip()]
    queries_path = path.parent / "queries.jsonl"
    if not queries_path.is_file():
        raise PathNotFoundError(f"{queries_path} is missing; write one {{\"prompt_id\", \"prompt\"}} line per query "
                                "beside the collection (mvrag_jax/eval/retrievers.py)")
    queries = [json.loads(line) for line in queries_path.read_text(encoding="utf-8").splitlines() if line.strip()]
    bad = [q for q in queries if not isinstance(q.get("prompt"), str) or q.get("prompt_id") is None]
    if bad or not queries:
        raise UsageError(f"{queries_path}: every line needs prompt_id and prompt (bad: {bad[:2]}, lines: {len(queries)})")
    without = sorted({str(q["prompt_id"]) for q in queries} - {str(g) for g in groups if g is not None})
    if without:
        raise UsageError(f"queries {without[:5]} have no image in {path} (prompt_id); Precision@5 would be 0 by "
                         "construction")
    return root, records, groups, queries


def bm25_scores(captions: list[str], prompts: list[str]) -> np.ndarray:
    """[queries, records] BM25 over the captions, as retrieval/bm25.py indexes them (in memory)."""
    stem = bm25.make_stemmer()
    model = bm25._bm25s().BM25(k1=bm25.K1, b=bm25.B, method=bm25.METHOD)
    model.index([bm25.analyze(c, stem) for c in captions], show_progress=False)
    out = np.zeros((len(prompts), len(captions)), np.float32)
    for i, prompt in enumerate(prompts):
        ids = model.get_tokens_ids(bm25.analyze(prompt, stem))
        if ids:
            out[i] = np.asarray(model.get_scores_from_ids(ids))
    return out


def _cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    unit = lambda x: x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)
    return unit(np.asarray(a, np.float64)) @ unit(np.asarray(b, np.float64)).T


def _entry(values: list[float]) -> dict[str, Any]:
    ci = metrics.bootstrap_ci(np.asarray(values))
    return {"mean": float(np.mean(values)), "n": len(values), "ci95": None if ci is None else list(ci), "missing": None}


def study(collection: str, clip_model: str | None, siglip: str | None) -> dict[str, Any]:
    root, records, groups, queries = read_study(collection)
    prompts = [q["prompt"] for q in queries]
    relevant = np.asarray([[str(g) == str(q["prompt_id"]) if g is not None else False for g in groups]
                           for q in queries])
    captions = [r.caption for r in records]
    scores: dict[str, np.ndarray | str] = {"bm25": bm25_scores(captions, prompts)}
    need_images = clip_model or siglip
    pictures = [np.asarray(Image.open(root / r.image).convert("RGB")) for r in records] if need_images else []
    if clip_model:
        from mvrag_jax.eval.alignment import load_clip
        clip = load_clip(clip_model)
        text = clip.text(prompts)
        scores["clip_text_image"] = _cosines(text, clip.images(pictures))
        scores["clip_text_text"] = _cosines(text, clip.text(captions))
    else:
        scores["clip_text_image"] = scores["clip_text_text"] = "no CLIP model given (--clip_model DIR)"
    if siglip:
        from mvrag_jax.eval.alignment import load_siglip
        model = load_siglip(siglip)
        scores["siglip_text_image"] = _cosines(model.text(prompts), model.images(pictures))
    else:
        scores["siglip_text_image"] = "no SigLIP model given (--siglip DIR)"
    table = {}
    for name in RETRIEVERS:
        value = scores[name]
        if isinstance(value, str):
            table[name] = {"mean": None, "n": 0, "ci95": None, "missing": value}
        else:
            table[name] = _entry([precision_at(value[i], relevant[i]) for i in range(len(queries))])
    return {"collection": str(collection), "records": len(records), "relevant": int(sum(g is not None for g in groups)),
            "queries": len(queries), "top": TOP, "precision_at_5": table, "paper": PAPER}


def markdown(result: dict[str, Any]) -> str:
    lines = [f"# Retrievers: Precision@{TOP} ({result['queries']} queries, {result['records']} images of which "
             f"{result['relevant']} belong to a query)", "", "| retriever | ours | 95 % CI | paper (Table 4) |",
             "|---|---|---|---|"]
    for name in RETRIEVERS:
        e = result["precision_at_5"][name]
        if e["missing"]:
            lines.append(f"| {LABELS[name]} | missing: {e['missing']} | - | {PAPER[name]:.4f} |")
        else:
            ci = "-" if e["ci95"] is None else f"[{e['ci95'][0]:.4f}, {e['ci95'][1]:.4f}]"
            lines.append(f"| {LABELS[name]} | {e['mean']:.4f} | {ci} | {PAPER[name]:.4f} |")
    return "\n".join(lines) + "\n"


def run_study(*, out: str, collection: str | None, clip_model: str | None = None, siglip: str | None = None,
              overwrite: bool = False) -> pathlib.Path:
    if not collection:
        raise UsageError("--study retrievers needs --collection FILE.jsonl (with queries.jsonl beside it; see "
                         "mvrag_jax/eval/retrievers.py)")
    result = study(collection, clip_model, siglip)
    with atomic_directory(out, overwrite) as folder:
        (folder / "retrievers.json").write_text(json.dumps(result, indent=1))
        (folder / "retrievers.md").write_text(markdown(result))
    return pathlib.Path(out).expanduser().absolute()
