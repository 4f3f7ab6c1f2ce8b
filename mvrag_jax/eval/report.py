"""Write an evaluation's results: metrics.json, report.md, per-sample scores (jsonl + csv), the best/worst grid and
plots (matplotlib, Agg backend: no display needed).

    write_report(folder, result)   # result: the dict eval.run builds (method, dataset, metrics, rows, ...)
"""

import csv
import json
import pathlib
from typing import Any, Sequence

import numpy as np
from PIL import Image, ImageDraw

from mvrag_jax.eval.score import HIGHER_IS_BETTER, LABELS, METRICS

# The paper's Table (MV-RAG, OOD-Eval, 4 views): shown next to ours for orientation, not as a target we computed.
PAPER_MVRAG = {"clip": 71.77, "dinov2": 50.19, "ir": 67.41, "fid": 54.79, "inception_score": 13.20}
GRID_ROWS = 3       # best and worst samples shown each
TILE = 128          # grid tile side in pixels


def _fmt(value: float | None, digits: int = 2) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def markdown_table(summary: dict[str, dict[str, Any]]) -> str:
    lines = ["| metric | ours | 95 % CI | n | paper MV-RAG (OOD-Eval, 4 views) |", "|---|---|---|---|---|"]
    for name in METRICS:
        entry = summary[name]
        arrow = "higher" if HIGHER_IS_BETTER[name] else "lower"
        label = f"{LABELS[name]} ({arrow} is better)"
        paper = _fmt(PAPER_MVRAG.get(name))
        if entry["missing"]:
            lines.append(f"| {label} | missing: {entry['missing']} | - | 0 | {paper} |")
            continue
        ci = "-" if entry["ci95"] is None else f"[{entry['ci95'][0]:.2f}, {entry['ci95'][1]:.2f}]"
        lines.append(f"| {label} | {entry['mean']:.2f} | {ci} | {entry['n']} | {paper} |")
    return "\n".join(lines)


def primary_metric(summary: dict[str, dict[str, Any]]) -> str | None:
    """The per-sample metric that ranks samples for the grid: DINOv2, else CLIP."""
    return next((m for m in ("dinov2", "clip") if not summary[m]["missing"]), None)


def _tile(image: np.ndarray) -> Image.Image:
    return Image.fromarray(np.asarray(image, np.uint8)).convert("RGB").resize((TILE, TILE), Image.Resampling.BILINEAR)


def grid_png(path: pathlib.Path, rows: Sequence[dict], views: dict[tuple, np.ndarray], references: dict[str, Any],
             metric: str) -> None:
    """Best and worst samples by `metric`: each line is [first reference | views ...] with a caption."""
    ranked = sorted(rows, key=lambda r: r[metric], reverse=HIGHER_IS_BETTER[metric])
    chosen = ranked[:GRID_ROWS] + [r for r in ranked[-GRID_ROWS:] if r not in ranked[:GRID_ROWS]]
    width = max(1 + len(views[(r["prompt_id"], r["seed"])]) for r in chosen) * TILE
    line_h = TILE + 16
    canvas = Image.new("RGB", (width, line_h * len(chosen)), (255, 255, 255))
    draw = ImageDraw.Draw(canvas)
    for i, row in enumerate(chosen):
        rank = ranked.index(row) + 1
        caption = f"#{rank}/{len(ranked)} {metric}={row[metric]:.1f} {row['prompt_id']}: {row['prompt'][:60]}"
        draw.text((2, i * line_h + 2), caption, fill=(0, 0, 0))
        tiles = [references[row["prompt_id"]][0]] + list(views[(row["prompt_id"], row["seed"])])
        for j, image in enumerate(tiles):
            canvas.paste(_tile(image), (j * TILE, i * line_h + 16))
    canvas.save(path)


def plots(folder: pathlib.Path, rows: Sequence[dict]) -> list[str]:
    """Histograms of the per-sample metrics, and fusion weight vs score when the samples carry a fusion weight."""
    import matplotlib
    matplotlib.use("Agg")
    from matplotlib import pyplot as plt
    written = []
    names = [m for m in ("clip", "dinov2", "ir", "consistency") if any(m in r for r in rows)]
    if names:
        fig, axes = plt.subplots(1, len(names), figsize=(4 * len(names), 3), squeeze=False)
        for ax, name in zip(axes[0], names):
            ax.hist([r[name] for r in rows if name in r], bins=min(20, max(3, len(rows))))
            ax.set_xlabel(LABELS[name])
            ax.set_ylabel("samples")
        fig.tight_layout()
        fig.savefig(folder / "histograms.png", dpi=80)
        plt.close(fig)
        written.append("histograms.png")
    weighted = [r for r in rows if r.get("fusion_weight") is not None]
    if weighted and names:
        fig, axes = plt.subplots(1, len(names), figsize=(4 * len(names), 3), squeeze=False)
        for ax, name in zip(axes[0], names):
            points = [(r["fusion_weight"], r[name]) for r in weighted if name in r]
            ax.scatter([p[0] for p in points], [p[1] for p in points], s=12)
            ax.set_xlabel("fusion weight")
            ax.set_ylabel(LABELS[name])
        fig.tight_layout()
        fig.savefig(folder / "fusion_weight_vs_score.png", dpi=80)
        plt.close(fig)
        written.append("fusion_weight_vs_score.png")
    return written


def write_rows(folder: pathlib.Path, rows: Sequence[dict]) -> None:
    with open(folder / "per_sample.jsonl", "w") as f:
        for row in rows:
            f.write(json.dumps(row) + "\n")
    columns = ["prompt_id", "seed", "prompt", "views", "references", "fusion_weight", "clip", "dinov2", "ir",
               "consistency"]
    with open(folder / "per_sample.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=columns, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)


def write_report(folder: pathlib.Path, result: dict[str, Any], views: dict[tuple, np.ndarray],
                 references: dict[str, Any]) -> None:
    """All files of one evaluation into `folder` (which exists)."""
    rows, summary = result["rows"], result["metrics"]
    write_rows(folder, rows)
    files = ["metrics.json", "report.md", "per_sample.jsonl", "per_sample.csv"]
    metric = primary_metric(summary)
    if metric:
        grid_png(folder / "best_worst.png", rows, views, references, metric)
        files.append("best_worst.png")
    files += plots(folder, rows)
    meta = {k: v for k, v in result.items() if k != "rows"}
    (folder / "metrics.json").write_text(json.dumps({**meta, "files": files}, indent=1))
    lines = [f"# Evaluation: {result['method']} on {result['dataset']}", "",
             f"{result['samples']} samples ({result['prompts']} prompts x seeds {result['seeds']}), "
             f"{result['skipped_count']} dataset prompts skipped. Reference split: "
             + "; ".join(f"{count} prompts by {rule}" for rule, count in result["split_rules"].items()) + ". "
             + _segmented_line(result), "",
             markdown_table(summary), "",
             "Similarities are mean cosine x 100 between every generated view and every held-out reference image "
             "of the prompt; FID/IS are over all generated views (FID against all references). The paper column is "
             "the published MV-RAG figure, for orientation only: it needs the same encoders and data to compare."]
    if result.get("timings"):
        lines += ["", "## Time per stage (s)", "", "| stage | seconds |", "|---|---|"]
        lines += [f"| {k} | {v:.2f} |" for k, v in result["timings"].items()]
    if metric:
        lines += ["", f"![best and worst samples by {metric}](best_worst.png)"]
    lines += [f"![{name}]({name})" for name in files if name.endswith(".png") and name != "best_worst.png"]
    (folder / "report.md").write_text("\n".join(lines) + "\n")


def _segmented_line(result: dict) -> str:
    """What the similarity columns compare against: segmented objects (the paper, C.3) or whole photos."""
    done, total = result.get("references_segmented", 0), result.get("references", 0)
    if total and done == total:
        return f"All {total} references are segmented by their masks, as in the paper (C.3)."
    return (f"{done} of {total} references are segmented (masks/); the rest keep their backgrounds, so the "
            "similarities also compare backgrounds and are not comparable with the paper's segmented references.")

