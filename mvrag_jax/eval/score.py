"""Score generated views against a dataset's held-out references: per-sample rows and a summary per metric.

A sample is one generated object (a prompt and a seed): views [V, H, W, 3] uint8 and, when the generator reported it,
its fusion weight. Summary entries have one shape for every metric:

    {"mean": float | None, "n": int, "ci95": [low, high] | None, "missing": None | "why there is no number"}

CLIP / DINOv2 / IR similarity and consistency: mean over samples, n samples, bootstrap CI over samples. FID and IS are
set-level: the value over all samples, n generated images, CI from a bootstrap over prompts (FID_RESAMPLES
resamples: each costs two eigendecompositions of a 2048 x 2048 matrix).
"""

import dataclasses
from typing import Any, Sequence

import numpy as np
from tqdm import tqdm

from mvrag_jax.eval import metrics
from mvrag_jax.eval.dataset import EvalDataset
from mvrag_jax.eval.encoders import Encoders
from mvrag_jax.errors import UsageError

PER_SAMPLE = ("clip", "dinov2", "ir", "consistency")
SET_LEVEL = ("fid", "inception_score")
METRICS = PER_SAMPLE + SET_LEVEL
LABELS = {"clip": "CLIP sim x100", "dinov2": "DINOv2 sim x100", "ir": "IR (GUIE) sim x100",
          "consistency": "view consistency (DINOv2) x100", "fid": "FID", "inception_score": "IS"}
HIGHER_IS_BETTER = {"clip": True, "dinov2": True, "ir": True, "consistency": True, "fid": False,
                    "inception_score": True}
FID_RESAMPLES = 50
IS_SPLITS = 10


@dataclasses.dataclass(frozen=True)
class Sample:
    prompt_id: str
    seed: int | None
    views: np.ndarray                  # [V, H, W, 3] uint8
    fusion_weight: float | None = None


def _missing(reason: str) -> dict[str, Any]:
    return {"mean": None, "n": 0, "ci95": None, "missing": reason}


def _summary(values: Sequence[float]) -> dict[str, Any]:
    ci = metrics.bootstrap_ci(np.asarray(values))
    return {"mean": float(np.mean(values)), "n": len(values), "ci95": None if ci is None else list(ci),
            "missing": None}


def _set_level(value_fn, groups: list[int], n: int, resamples: int, seed: int = 0) -> dict[str, Any]:
    """A set-level metric value_fn(prompt indices) with a bootstrap over prompts."""
    everything = list(range(len(groups)))
    value = value_fn(everything)
    rng = np.random.default_rng(seed)
    draws = [value_fn(list(rng.integers(0, len(groups), len(groups)))) for _ in range(resamples)] \
        if len(groups) >= 2 else []
    ci = [float(np.percentile(draws, 2.5)), float(np.percentile(draws, 97.5))] if draws else None
    return {"mean": float(value), "n": n, "ci95": ci, "missing": None}


def score_samples(encoders: Encoders, dataset: EvalDataset, samples: Sequence[Sample], *,
                  fid_resamples: int = FID_RESAMPLES, show_progress: bool = True
                  ) -> tuple[list[dict[str, Any]], dict[str, dict[str, Any]]]:
    """(rows: one dict per sample with its per-sample metrics, summary: metric -> entry as in the docstring)."""
    prompts = {p.prompt_id: p for p in dataset.prompts}
    unknown = sorted({s.prompt_id for s in samples} - set(prompts))
    if unknown:
        raise UsageError(f"samples for prompt ids {unknown[:5]} that dataset {dataset.name} does not have; the "
                         "image folder must use the dataset's prompt ids as folder names")
    if not samples:
        raise UsageError(f"no generated samples to score for dataset {dataset.name}")
    reference_cache: dict[tuple[str, str], np.ndarray] = {}

    def references(name: str, embed, prompt_id: str) -> np.ndarray:
        if (name, prompt_id) not in reference_cache:
            reference_cache[(name, prompt_id)] = embed(list(prompts[prompt_id].reference))
        return reference_cache[(name, prompt_id)]

    rows, pool_gen, logits_gen = [], {}, {}
    for sample in tqdm(samples, desc="scoring", unit="object", disable=not show_progress):
        prompt = prompts[sample.prompt_id]
        views = list(sample.views)
        row = {"prompt_id": sample.prompt_id, "prompt": prompt.prompt, "seed": sample.seed,
               "views": len(views), "references": len(prompt.reference), "fusion_weight": sample.fusion_weight}
        for name, embed in (("clip", encoders.clip), ("dinov2", encoders.dinov2), ("ir", encoders.ir)):
            if embed is not None:
                generated = embed(views)
                row[name] = metrics.similarity_x100(generated, references(name, embed, sample.prompt_id))
                if name == "dinov2" and len(views) >= 2:
                    row["consistency"] = metrics.view_consistency_x100(generated)
        if encoders.inception is not None:
            pool, logits = encoders.inception(views)
            pool_gen.setdefault(sample.prompt_id, []).append(pool)
            logits_gen.setdefault(sample.prompt_id, []).append(logits)
        rows.append(row)

    summary = {}
    for name in PER_SAMPLE:
        values = [row[name] for row in rows if name in row]
        if values:
            summary[name] = _summary(values)
        elif name == "consistency" and encoders.dinov2 is not None:
            summary[name] = _missing("every sample has a single view; consistency needs >= 2 views")
        else:
            summary[name] = _missing(encoders.missing.get("dinov2" if name == "consistency" else name,
                                                          "not computed"))
    summary.update(_set_metrics(encoders, prompts, pool_gen, logits_gen, fid_resamples))
    return rows, summary


def _set_metrics(encoders: Encoders, prompts: dict, pool_gen: dict, logits_gen: dict, resamples: int
                 ) -> dict[str, dict[str, Any]]:
    if encoders.inception is None:
        reason = encoders.missing.get("inception", "not computed")
        return {"fid": _missing(reason), "inception_score": _missing(reason)}
    ids = sorted(pool_gen)
    gen = [np.concatenate(pool_gen[i]) for i in ids]                        # per prompt [views x seeds, d]
    ref = [encoders.inception(list(prompts[i].reference))[0] for i in ids]  # per prompt [refs, d]
    logits = [np.concatenate(logits_gen[i]) for i in ids]
    n_gen, n_ref = sum(map(len, gen)), sum(map(len, ref))
    out = {}
    if n_gen < 2 or n_ref < 2:
        out["fid"] = _missing(f"FID needs >= 2 generated and >= 2 reference images, got {n_gen} and {n_ref}")
    else:
        fid = lambda idx: metrics.fid(np.concatenate([gen[i] for i in idx]), np.concatenate([ref[i] for i in idx]))
        out["fid"] = {**_set_level(fid, gen, n_gen, resamples), "n_reference": n_ref}
    splits = min(IS_SPLITS, n_gen)
    score = lambda idx: metrics.inception_score(np.concatenate([logits[i] for i in idx]), splits)
    out["inception_score"] = {**_set_level(score, logits, n_gen, resamples), "splits": splits}
    return out
