"""`mvrag eval`: score a checkpoint (generating first) or another method's images on an evaluation dataset.

    mvrag eval --images DIR --dataset ood_eval|DATASET_DIR --out OUT [--clip_model DIR] [--dinov2 DIR] [--inception F]
    mvrag eval --ckpt CKPT  --dataset ood_eval|DATASET_DIR --out OUT [--k 4] [--seeds 0,1] [--steps 50] ...

`--images DIR` layout (what `--ckpt` writes under OUT/views; `mvrag generate` writes the same view_<i>.png files per
object, in folders named after the prompt instead of its dataset id):

    DIR/<prompt_id>/view_<i>.png    the generated views of one prompt (i = 0, 1, ...; >= 1 view)
    DIR/<prompt_id>/meta.json       optional {"fusion_weight": float} (for the fusion-weight plot)

with the dataset's prompt ids as folder names. A dataset prompt without a folder is reported as skipped; a folder
that is not a dataset prompt is an error (it would mean scoring against the wrong references).

OUT (written atomically) gets metrics.json, report.md, per_sample.jsonl/.csv, best_worst.png, plots, and with
--ckpt also views/ (one seed: views/<prompt_id>/; several: views/seed_<s>/<prompt_id>/) and per-stage timings.
"""

import json
import logging
import pathlib
import re
import time
from typing import Any, Sequence

import numpy as np
from PIL import Image
from tqdm import tqdm

from mvrag_jax.convert.checkpoint import CONFIG_FILE, atomic_directory
from mvrag_jax.eval.dataset import EvalDataset, load_dataset
from mvrag_jax.eval.encoders import Encoders, load_encoders
from mvrag_jax.eval import rerender
from mvrag_jax.eval.report import write_report
from mvrag_jax.eval.score import Sample, score_samples
from mvrag_jax.errors import MvragError, PathNotFoundError, UsageError
from mvrag_jax.retrieval.base import DECODE_ERRORS

_LOG = logging.getLogger(__name__)
VIEW_FILE = re.compile(r"^view_(\d+)\.(png|jpg|jpeg|webp)$", re.IGNORECASE)
META_FILE = "meta.json"


def read_views(folder: pathlib.Path) -> np.ndarray:
    """view_<i>.* files of one object in view order -> [V, H, W, 3] uint8."""
    files = sorted((int(m.group(1)), p) for p in folder.iterdir() if (m := VIEW_FILE.match(p.name)))
    if not files:
        raise PathNotFoundError(f"{folder} has no view_<i>.png files; see mvrag_jax/eval/run.py for the layout")
    views = [np.asarray(Image.open(p).convert("RGB")) for _, p in files]
    if len({v.shape for v in views}) != 1:
        raise UsageError(f"views in {folder} differ in size {sorted({v.shape for v in views})}; one object's views "
                         "must share one size")
    return np.stack(views)


def read_image_folder(images: str | pathlib.Path, dataset: EvalDataset) -> tuple[list[Sample], list[dict]]:
    """Samples from an --images folder, and the dataset prompts it has no views for (as skipped entries)."""
    root = pathlib.Path(images).expanduser().absolute()
    if not root.is_dir():
        raise PathNotFoundError(f"--images folder {root} does not exist")
    known = {p.prompt_id for p in dataset.prompts}
    folders = {p.name: p for p in root.iterdir() if p.is_dir()}
    extra = sorted(set(folders) - known)
    if extra:
        raise UsageError(f"--images {root} has folders {extra[:5]}{' ...' if len(extra) > 5 else ''} that are not "
                         f"prompt ids of dataset {dataset.name}; use the dataset's prompt ids as folder names")
    samples, skipped = [], []
    for prompt in dataset.prompts:
        folder = folders.get(prompt.prompt_id)
        if folder is None:
            skipped.append({"item": prompt.prompt_id, "reason": f"no folder in {root}"})
            continue
        meta = json.loads((folder / META_FILE).read_text()) if (folder / META_FILE).is_file() else {}
        try:
            views = read_views(folder)
        except DECODE_ERRORS as e:  # a truncated or corrupt PNG: skip the object (counted), as retrieval does
            if isinstance(e, MvragError):
                raise
            skipped.append({"item": prompt.prompt_id, "reason": f"unreadable view in {folder}: {e}"})
            continue
        samples.append(Sample(prompt.prompt_id, meta.get("seed"), views, meta.get("fusion_weight")))
    unreadable = sum(1 for s in skipped if s["reason"].startswith("unreadable"))
    if unreadable:
        _LOG.warning("skipped %d object(s) of %s with unreadable (corrupt or truncated) views; the report lists them",
                     unreadable, root)
    return samples, skipped


def write_views(folder: pathlib.Path, sample: Sample) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for i, view in enumerate(sample.views):
        Image.fromarray(view).save(folder / f"view_{i}.png")
    (folder / META_FILE).write_text(json.dumps({"seed": sample.seed, "fusion_weight": sample.fusion_weight}))


def generate_samples(pipeline: Any, dataset: EvalDataset, *, seeds: Sequence[int], options: Any,
                     retrieved_for=None, batch_size: int = 4, show_progress: bool = True
                     ) -> tuple[list[Sample], dict[str, float]]:
    """Generate every (prompt, seed) through `pipeline` (mvrag_jax.pipeline.Pipeline); `retrieved_for(i, prompt)`
    gives the conditioning images (default: the prompt's own). Returns samples and summed seconds per stage."""
    from mvrag_jax.pipeline import ObjectRequest
    retrieved_for = retrieved_for or (lambda i, prompt: prompt.retrieved)
    jobs = [(prompt, seed, tuple(retrieved_for(i, prompt)))
            for i, prompt in enumerate(dataset.prompts) for seed in seeds]
    samples, timings = [], {}
    for start in tqdm(range(0, len(jobs), batch_size), desc="generating", unit="batch", disable=not show_progress):
        chunk = jobs[start:start + batch_size]
        requests = [ObjectRequest(prompt=p.prompt, retrieved=r, seed=int(s)) for p, s, r in chunk]
        results, stage_seconds = pipeline.generate(requests, options)
        for key, value in stage_seconds.items():
            timings[key] = timings.get(key, 0.0) + float(value)
        samples += [Sample(p.prompt_id, int(s), np.asarray(result.images), result.fusion_weight)
                    for (p, s, _), result in zip(chunk, results)]
    return samples, timings


def load_pipeline(ckpt: str, num_views: int) -> Any:
    try:
        from mvrag_jax.pipeline import Pipeline
    except ImportError as e:
        raise UsageError(f"--ckpt needs mvrag_jax/pipeline/pipeline.py, which this checkout lacks ({e}); generate the views "
                         "with another tool and pass --images instead") from e
    return Pipeline.load(ckpt=ckpt, num_views=num_views)


def sampling_options(steps: int, guidance_scale: float) -> Any:
    from mvrag_jax.pipeline import SamplingOptions
    return SamplingOptions(num_inference_steps=steps, guidance_scale=guidance_scale)


def default_dinov2(ckpt: str | None) -> str | None:
    """With --ckpt and no --dinov2: the checkpoint itself when it holds a dinov2 component (else None: missing)."""
    if ckpt is None:
        return None
    meta = pathlib.Path(ckpt).expanduser() / CONFIG_FILE
    return ckpt if meta.is_file() and "dinov2" in json.loads(meta.read_text()).get("components", {}) else None


def evaluate(encoders: Encoders, dataset: EvalDataset, samples: Sequence[Sample], *, method: str,
             seeds: Sequence[int] | None, skipped: Sequence[dict] = (), timings: dict | None = None,
             show_progress: bool = True) -> dict[str, Any]:
    """Score samples; the result dict report.write_report takes (and metrics.json holds)."""
    rows, summary = score_samples(encoders, dataset, samples, show_progress=show_progress)
    rules: dict[str, int] = {}
    for prompt in dataset.prompts:
        rules[prompt.split] = rules.get(prompt.split, 0) + 1
    all_skipped = list(dataset.skipped) + list(skipped)
    return {"method": method, "dataset": dataset.name, "metrics": summary, "samples": len(samples),
            "prompts": len({s.prompt_id for s in samples}), "seeds": list(seeds) if seeds else None,
            "split_rules": rules, "references_segmented": sum(p.segmented for p in dataset.prompts),
            "references": sum(len(p.reference) for p in dataset.prompts), "skipped_count": len(all_skipped), "skipped": all_skipped[:50],
            "missing_encoders": encoders.missing, "timings": timings, "rows": rows}


def run(*, out: str, dataset: str, images: str | None = None, ckpt: str | None = None, k: int = 4,
        seeds: Sequence[int] = (0,), clip_model: str | None = None, dinov2: str | None = None,
        inception: str | None = None, ir: str | None = None, ir_output: str = "embedding",
        steps: int = 50, guidance_scale: float = 5.0, num_views: int = 4,
        batch_size: int = 4, overwrite: bool = False, show_progress: bool = True, lgm: str | None = None,
        lgm_input_size: int = 256, elevation: float = 15.0, rerender_size: int = 256) -> pathlib.Path:
    """`mvrag eval`: returns the OUT folder (see the module docstring). `lgm`: also score the re-rendered setting
    (eval/rerender.py) with these LGM weights; `elevation` is the views' generation elevation."""
    if (images is None) == (ckpt is None):
        raise UsageError("pass exactly one of --images DIR (score existing views) or --ckpt DIR (generate, then "
                         "score)")
    if k < 0:
        raise UsageError(f"--k={k}; it must be >= 0 (0: text-only generation)")
    data = load_dataset(dataset)
    encoders = load_encoders(clip_model=clip_model, dinov2_path=dinov2 or default_dinov2(ckpt),
                             inception_path=inception, ir_path=ir, ir_output=ir_output)
    with atomic_directory(out, overwrite) as folder:
        if images is not None:
            samples, skipped = read_image_folder(images, data)
            result = evaluate(encoders, data, samples, method=str(pathlib.Path(images).absolute()), seeds=None,
                              skipped=skipped, show_progress=show_progress)
        else:
            pipeline = load_pipeline(ckpt, num_views)
            began = time.perf_counter()
            samples, timings = generate_samples(pipeline, data, seeds=seeds,
                                                options=sampling_options(steps, guidance_scale),
                                                retrieved_for=lambda i, p: p.retrieved[:k], batch_size=batch_size,
                                                show_progress=show_progress)
            timings["generate_total"] = time.perf_counter() - began
            for sample in samples:
                sub = pathlib.Path(sample.prompt_id) if len(seeds) == 1 else \
                    pathlib.Path(f"seed_{sample.seed}") / sample.prompt_id
                write_views(folder / "views" / sub, sample)
            began = time.perf_counter()
            result = evaluate(encoders, data, samples, method=str(pathlib.Path(ckpt).absolute()), seeds=seeds,
                              timings=timings, show_progress=show_progress)
            result["timings"]["score"] = time.perf_counter() - began
            result.update(k=k, steps=steps, guidance_scale=guidance_scale, num_views=num_views)
        views = {(s.prompt_id, s.seed): s.views for s in samples}
        references = {p.prompt_id: p.reference for p in data.prompts}
        if lgm is not None:
            rerendered, seconds = rerender.rerender_samples(samples, lgm, elevation=elevation,
                                                           input_size=lgm_input_size, render_size=rerender_size)
            scored = evaluate(encoders, data, rerendered, method=result["method"], seeds=result["seeds"],
                              show_progress=show_progress)
            result["rerendered"] = {**{k: scored[k] for k in ("metrics", "samples", "missing_encoders")},
                                    "lgm": str(pathlib.Path(lgm).absolute()), "seconds": seconds}
        write_report(folder, result, views, references)
        if lgm is not None:
            rerender.write_rerendered(folder, rerendered, result["rerendered"]["metrics"])
    return pathlib.Path(out).expanduser().absolute()
