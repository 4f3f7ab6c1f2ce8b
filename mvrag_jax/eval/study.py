"""`mvrag eval --study retrieval`: how the metrics and the fusion weight move with the retrievals.

The same prompts and seeds are generated with k retrieved images for each k in `ks`, under three conditions:
  correct   the prompt's own retrieved images (the first k)
  shuffled  the first k retrieved images of another prompt (prompt i takes prompt i + 1's, cyclically)
  noise     the prompt's own images with Gaussian pixel noise (sigma NOISE_SIGMA grey levels, fixed seed) added
k = 0 is text-only generation and the same for every condition, so it runs once (reported under each condition).
Every run is scored as `mvrag eval` scores one (eval/run.py); OUT gets study.json (condition -> k -> metric means,
fusion weight mean), study.md (tables) and study.png (each metric against k, one line per condition), and runs/
with each run's full report.

    mvrag eval --study retrieval --ckpt CKPT --dataset DIR --out OUT --ks 0,1,2,4 --dinov2 ... --clip_model ...
"""

import json
import pathlib
from typing import Any, Sequence

import numpy as np

from mvrag_jax.convert.checkpoint import atomic_directory
from mvrag_jax.eval.dataset import EvalDataset, EvalPrompt, load_dataset
from mvrag_jax.eval.encoders import load_encoders
from mvrag_jax.eval.report import write_report
from mvrag_jax.eval.run import default_dinov2, evaluate, generate_samples, load_pipeline, sampling_options
from mvrag_jax.eval.score import LABELS, PER_SAMPLE, SET_LEVEL
from mvrag_jax.errors import UsageError

CONDITIONS = ("correct", "shuffled", "noise")
NOISE_SIGMA = 64.0
NOISE_SEED = 1234


def corrupt(image: np.ndarray, rng: np.random.Generator, sigma: float = NOISE_SIGMA) -> np.ndarray:
    noisy = image.astype(np.float32) + rng.normal(0.0, sigma, image.shape)
    return np.clip(np.round(noisy), 0, 255).astype(np.uint8)


def retrievals(dataset: EvalDataset, condition: str, k: int) -> list[tuple[np.ndarray, ...]]:
    """The conditioning images of every prompt under `condition`, truncated to k."""
    prompts: Sequence[EvalPrompt] = dataset.prompts
    if condition == "correct":
        return [p.retrieved[:k] for p in prompts]
    if condition == "shuffled":
        if len(prompts) < 2:
            raise UsageError("the shuffled condition needs at least 2 prompts (each takes another's images)")
        return [prompts[(i + 1) % len(prompts)].retrieved[:k] for i in range(len(prompts))]
    if condition == "noise":
        rng = np.random.default_rng(NOISE_SEED)
        return [tuple(corrupt(image, rng) for image in p.retrieved[:k]) for p in prompts]
    raise UsageError(f"unknown condition {condition!r}; choose one of {CONDITIONS}")


def _means(result: dict[str, Any]) -> dict[str, Any]:
    weights = [r["fusion_weight"] for r in result["rows"] if r.get("fusion_weight") is not None]
    return {**{m: result["metrics"][m]["mean"] for m in PER_SAMPLE + SET_LEVEL},
            "fusion_weight": float(np.mean(weights)) if weights else None}


def _plot(path: pathlib.Path, table: dict[str, dict[int, dict]], ks: Sequence[int]) -> None:
    import matplotlib
    matplotlib.use("Agg")
    from matplotlib import pyplot as plt
    names = [m for m in PER_SAMPLE + SET_LEVEL + ("fusion_weight",)
             if any(table[c][k].get(m) is not None for c in table for k in ks)]
    if not names:
        return
    fig, axes = plt.subplots(1, len(names), figsize=(4 * len(names), 3), squeeze=False)
    for ax, name in zip(axes[0], names):
        for condition, by_k in table.items():
            points = [(k, by_k[k][name]) for k in ks if by_k[k].get(name) is not None]
            ax.plot([p[0] for p in points], [p[1] for p in points], marker="o", label=condition)
        ax.set_xlabel("k retrieved")
        ax.set_ylabel(LABELS.get(name, name))
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)


def _markdown(table: dict[str, dict[int, dict]], ks: Sequence[int]) -> str:
    names = list(PER_SAMPLE + SET_LEVEL) + ["fusion_weight"]
    fmt = lambda v: "-" if v is None else f"{v:.2f}"
    lines = ["# Retrieval sensitivity", ""]
    for condition, by_k in table.items():
        lines += [f"## {condition}", "", "| k | " + " | ".join(LABELS.get(n, n) for n in names) + " |",
                  "|---" * (len(names) + 1) + "|"]
        lines += [f"| {k} | " + " | ".join(fmt(by_k[k].get(n)) for n in names) + " |" for k in ks]
        lines.append("")
    lines.append("![metrics against k](study.png)")
    return "\n".join(lines) + "\n"


def run_study(*, out: str, dataset: str, ckpt: str | None, ks: Sequence[int] = (0, 1, 2, 4),
              seeds: Sequence[int] = (0,), clip_model: str | None = None, dinov2: str | None = None,
              inception: str | None = None, ir: str | None = None, ir_output: str = "embedding",
              steps: int = 50, guidance_scale: float = 5.0, num_views: int = 4,
              batch_size: int = 4, overwrite: bool = False, show_progress: bool = True) -> pathlib.Path:
    if ckpt is None:
        raise UsageError("--study retrieval generates the views: pass --ckpt DIR")
    if not ks or min(ks) < 0:
        raise UsageError(f"--ks={list(ks)}; give k values >= 0, e.g. --ks 0,1,2,4")
    data = load_dataset(dataset)
    encoders = load_encoders(clip_model=clip_model, dinov2_path=dinov2 or default_dinov2(ckpt),
                             inception_path=inception, ir_path=ir, ir_output=ir_output)
    pipeline = load_pipeline(ckpt, num_views)
    options = sampling_options(steps, guidance_scale)
    table: dict[str, dict[int, dict]] = {c: {} for c in CONDITIONS}
    with atomic_directory(out, overwrite) as folder:
        text_only = None
        for condition in CONDITIONS:
            for k in ks:
                if k == 0 and text_only is not None:
                    table[condition][k] = text_only
                    continue
                conditioning = retrievals(data, condition, k)
                samples, timings = generate_samples(pipeline, data, seeds=seeds, options=options,
                                                    retrieved_for=lambda i, p: conditioning[i],
                                                    batch_size=batch_size, show_progress=show_progress)
                result = evaluate(encoders, data, samples, method=f"{ckpt} [{condition}, k={k}]", seeds=seeds,
                                  timings=timings, show_progress=show_progress)
                run_dir = folder / "runs" / ("k0_text_only" if k == 0 else f"{condition}_k{k}")
                run_dir.mkdir(parents=True)
                write_report(run_dir, result, {(s.prompt_id, s.seed): s.views for s in samples},
                             {p.prompt_id: p.reference for p in data.prompts})
                table[condition][k] = _means(result)
                if k == 0:
                    text_only = table[condition][k]
        (folder / "study.json").write_text(json.dumps(
            {"ckpt": str(ckpt), "dataset": data.name, "ks": list(ks), "seeds": list(seeds), "steps": steps,
             "noise_sigma": NOISE_SIGMA, "conditions": {c: {str(k): v for k, v in t.items()} for c, t in
                                                        table.items()},
             "missing_encoders": encoders.missing}, indent=1))
        (folder / "study.md").write_text(_markdown(table, ks))
        _plot(folder / "study.png", table, ks)
    return pathlib.Path(out).expanduser().absolute()
