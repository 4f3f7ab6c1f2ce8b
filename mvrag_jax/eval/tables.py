"""`mvrag eval --tables`: the paper's Table 1 (OOD-Eval, 4 views and re-rendered: CLIP, DINOv2, IR, FID, IS) and
Table 3 (IND-Eval: PSNR, SSIM, LPIPS, CLIP, SigLIP) for our views and any number of baselines, beside the paper's
numbers, with bootstrap 95 % intervals and plots.

    mvrag eval --tables --dataset OOD_DIR --images OURS --baseline MVDream=DIR --baseline ImageDream-P=DIR \
        [--ind_eval IND_DIR --ind_images OURS_IND --ind_baseline MVDream=DIR] --clip_model ... --out OUT

Every method is scored the same way (eval/run.py for Table 1, eval/ind_eval.py for Table 3), with the same encoders;
a metric without weights is reported missing with its reason. Our views come from a folder: generate them first
with `mvrag eval --ckpt CKPT --out RUN` (RUN/views/) or `mvrag generate`, then pass `--images RUN/views`.

Re-rendered columns (C.5): `rerender(views_dir, out_dir)` turns a folder of views per object (<id>/view_<i>.png)
into a folder of re-rendered views per object in the same layout (LGM -> 18 views on a circle); they are scored
exactly as the 4 views are. Without a re-renderer the columns are missing with the reason (RERENDER_MISSING).

OUT: tables.json, tables.md, table1.png / table3.png (each metric, one bar per method with its interval, the paper's
figures as marks), methods/<name>/ (each method's full eval report), ind/<name>/ (IND-Eval rows).
"""

import json
import pathlib
from typing import Any, Callable, Sequence

import numpy as np

from mvrag_jax.convert.checkpoint import atomic_directory
from mvrag_jax.eval import ind_eval
from mvrag_jax.eval.dataset import load_dataset
from mvrag_jax.eval.encoders import load_encoders
from mvrag_jax.eval.report import write_report
from mvrag_jax.eval.run import evaluate, read_image_folder, read_views
from mvrag_jax.errors import PathNotFoundError, UsageError

TABLE1 = ("clip", "dinov2", "ir", "fid", "inception_score")
TABLE1_LABELS = {"clip": "CLIP", "dinov2": "DINOv2", "ir": "IR", "fid": "FID", "inception_score": "IS"}
# Table 1 of the paper: 4-view and re-rendered columns (None: not reported).
PAPER_TABLE1 = {
    "MV-RAG": ({"clip": 71.77, "dinov2": 50.19, "ir": 67.41, "fid": 54.79, "inception_score": 13.20},
               {"clip": 74.28, "dinov2": 39.61, "ir": 66.59, "fid": 80.54, "inception_score": 12.33}),
    "MVDream": ({"clip": 66.47, "dinov2": 33.12, "ir": 58.01, "fid": 76.71, "inception_score": 10.62},
                {"clip": 70.83, "dinov2": 28.66, "ir": 58.98, "fid": 96.29, "inception_score": 11.39}),
    "ImageDream-P": ({"clip": 69.20, "dinov2": 45.01, "ir": 65.64, "fid": 68.40, "inception_score": 12.11}, None),
}
RERENDER_MISSING = ("re-rendered views need a 3D reconstruction of the 4 views (LGM, paper C.5): not run; "
                    "pass --rerender with --lgm CKPT")
Rerender = Callable[[pathlib.Path, pathlib.Path], pathlib.Path]


def parse_named(values: Sequence[str], flag: str) -> dict[str, str]:
    """`NAME=DIR` strings -> {name: dir}; names unique."""
    out = {}
    for value in values or ():
        name, sep, folder = value.partition("=")
        if not sep or not name or not folder:
            raise UsageError(f"--{flag} {value!r}: write it as NAME=DIR (e.g. --{flag} MVDream=out/mvdream)")
        if name in out or name == "ours":
            raise UsageError(f"--{flag} name {name!r} is used twice (or is 'ours'); give every method its own name")
        out[name] = folder
    return out


def _entry_text(entry: dict | None, digits: int = 2) -> str:
    if entry is None:
        return "-"
    if entry.get("missing"):
        return "missing"
    ci = entry.get("ci95")
    return f"{entry['mean']:.{digits}f}" + (f" [{ci[0]:.{digits}f}, {ci[1]:.{digits}f}]" if ci else "")


def _score_views(encoders, data, folder: pathlib.Path, name: str, report_dir: pathlib.Path) -> dict[str, Any]:
    samples, skipped = read_image_folder(folder, data)
    result = evaluate(encoders, data, samples, method=name, seeds=None, skipped=skipped, show_progress=False)
    report_dir.mkdir(parents=True, exist_ok=True)
    write_report(report_dir, result, {(s.prompt_id, s.seed): s.views for s in samples},
                 {p.prompt_id: p.reference for p in data.prompts})
    return {m: result["metrics"][m] for m in TABLE1}


def table1(encoders, data, methods: dict[str, pathlib.Path], folder: pathlib.Path,
           rerender: Rerender | None) -> dict[str, dict[str, Any]]:
    """{method: {"views": {metric: entry}, "rerendered": {metric: entry}}}."""
    out = {}
    for name, views in methods.items():
        row = {"views": _score_views(encoders, data, views, name, folder / "methods" / name)}
        if rerender is None:
            row["rerendered"] = {m: {"mean": None, "n": 0, "ci95": None, "missing": RERENDER_MISSING} for m in TABLE1}
        else:
            rendered = rerender(views, folder / "rerendered" / name)
            row["rerendered"] = _score_views(encoders, data, rendered, f"{name} (re-rendered)",
                                             folder / "methods" / f"{name}_rerendered")
        out[name] = row
    return out


def table3(objects, scorers, methods: dict[str, pathlib.Path], folder: pathlib.Path) -> dict[str, Any]:
    out = {}
    for name, views_dir in methods.items():
        root = pathlib.Path(views_dir).expanduser().absolute()
        if not root.is_dir():
            raise PathNotFoundError(f"IND-Eval views of {name}: {root} does not exist")
        generated = {p.name: read_views(p) for p in root.iterdir() if p.is_dir()}
        unknown = sorted(set(generated) - {o.object_id for o in objects})
        if unknown:
            raise UsageError(f"IND-Eval views of {name} ({root}) have folders {unknown[:5]} that are not object ids")
        rows, summary, skipped = ind_eval.score_ind(objects, generated, scorers, show_progress=False)
        (folder / "ind" / name).mkdir(parents=True, exist_ok=True)
        (folder / "ind" / name / "rows.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
        (folder / "ind" / name / "report.md").write_text(f"# IND-Eval: {name}\n\n" + ind_eval.markdown(summary, rows)
                                                          + "\n")
        out[name] = {"metrics": summary, "objects": len(rows), "masked": sum(r["masked"] for r in rows),
                     "skipped": skipped}
    return out


def markdown(t1: dict | None, t3: dict | None) -> str:
    lines = ["# Paper tables, reproduced", ""]
    if t1 is not None:
        head = " | ".join(f"{TABLE1_LABELS[m]} (4 views)" for m in TABLE1) + " | " + \
            " | ".join(f"{TABLE1_LABELS[m]} (re-rendered)" for m in TABLE1)
        lines += ["## Table 1: OOD-Eval (similarities x100 higher better; FID lower better; IS higher better)", "",
                  f"| method | {head} |", "|---" * (1 + 2 * len(TABLE1)) + "|"]
        for name, row in t1.items():
            cells = [_entry_text(row["views"][m]) for m in TABLE1] + [_entry_text(row["rerendered"][m]) for m in TABLE1]
            lines.append(f"| {name} | " + " | ".join(cells) + " |")
        for name, (views, rendered) in PAPER_TABLE1.items():
            cells = [f"{views[m]:.2f}" for m in TABLE1] + \
                [("-" if rendered is None else f"{rendered[m]:.2f}") for m in TABLE1]
            lines.append(f"| paper: {name} | " + " | ".join(cells) + " |")
        reasons = {f"{TABLE1_LABELS[m]} ({col})": row[col][m]["missing"] for row in t1.values()
                   for col in ("views", "rerendered") for m in TABLE1 if row[col][m].get("missing")}
        if reasons:
            lines += ["", "Missing:"] + [f"- {k}: {v}" for k, v in sorted(reasons.items())]
        lines += ["", "Cells: mean [bootstrap 95 % interval over prompts]. The paper rows are its published figures, "
                  "for comparison; they need the same encoders, data and references to be comparable.", ""]
    if t3 is not None:
        lines += ["## Table 3: IND-Eval", "", "| method | " + " | ".join(ind_eval.LABELS[m] for m in ind_eval.METRICS)
                  + " | objects (masked) |", "|---" * (2 + len(ind_eval.METRICS)) + "|"]
        for name, row in t3.items():
            lines.append(f"| {name} | " + " | ".join(_entry_text(row["metrics"][m], 3) for m in ind_eval.METRICS)
                         + f" | {row['objects']} ({row['masked']}) |")
        for name, paper in ind_eval.PAPER.items():
            lines.append(f"| paper: {name} | " + " | ".join(str(paper[m]) for m in ind_eval.METRICS) + " | 50 |")
        reasons = {ind_eval.LABELS[m]: row["metrics"][m]["missing"] for row in t3.values() for m in ind_eval.METRICS
                   if row["metrics"][m]["missing"]}
        if reasons:
            lines += ["", "Missing:"] + [f"- {k}: {v}" for k, v in sorted(reasons.items())]
    return "\n".join(lines) + "\n"


def _plot(path: pathlib.Path, metrics: Sequence[str], labels: dict, methods: dict[str, dict], paper: dict) -> bool:
    """One panel per metric: a bar per method with its interval, the paper's figures as dashed lines."""
    import matplotlib
    matplotlib.use("Agg")
    from matplotlib import pyplot as plt
    shown = [m for m in metrics if any(not e[m].get("missing") for e in methods.values())]
    if not shown:
        return False
    fig, axes = plt.subplots(1, len(shown), figsize=(3.2 * len(shown), 3), squeeze=False)
    for ax, m in zip(axes[0], shown):
        names = list(methods)
        means = [methods[n][m]["mean"] if not methods[n][m].get("missing") else np.nan for n in names]
        errs = [[mean - (methods[n][m]["ci95"] or [mean, mean])[0] if not np.isnan(mean) else 0 for n, mean in
                 zip(names, means)],
                [(methods[n][m]["ci95"] or [mean, mean])[1] - mean if not np.isnan(mean) else 0 for n, mean in
                 zip(names, means)]]
        ax.bar(range(len(names)), means, yerr=errs, capsize=3)
        for i, (pname, values) in enumerate(paper.items()):
            if values.get(m) is not None:
                ax.axhline(values[m], ls="--", lw=1, color=f"C{i + 1}", label=f"paper {pname}")
        ax.set_xticks(range(len(names)), names, rotation=30, fontsize=7)
        ax.set_title(labels[m], fontsize=9)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=6, loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)
    return True


def run_tables(*, out: str, dataset: str | None, ours: str | None, baselines: dict[str, str],
               ind_eval_dir: str | None = None, ind_ours: str | None = None, ind_baselines: dict[str, str] = None,
               clip_model: str | None = None, dinov2: str | None = None, inception: str | None = None,
               ir: str | None = None, ir_output: str = "embedding", lpips: str | None = None,
               siglip: str | None = None, rerender: Rerender | None = None, overwrite: bool = False
               ) -> pathlib.Path:
    """Write OUT (module docstring). `ours` / `ind_ours`: folders of our views (None: no row for us)."""
    methods = {**({"ours": pathlib.Path(ours)} if ours else {}), **{k: pathlib.Path(v) for k, v in baselines.items()}}
    ind_methods = {**({"ours": pathlib.Path(ind_ours)} if ind_ours else {}),
                   **{k: pathlib.Path(v) for k, v in (ind_baselines or {}).items()}}
    if dataset is None and ind_eval_dir is None:
        raise UsageError("--tables needs --dataset (Table 1) and/or --ind_eval (Table 3)")
    if dataset is not None and not methods:
        raise UsageError("Table 1 needs views: --images (ours) and/or --baseline NAME=DIR")
    if ind_eval_dir is not None and not ind_methods:
        raise UsageError("Table 3 needs IND-Eval views: --ind_images (ours) and/or --ind_baseline NAME=DIR")
    with atomic_directory(out, overwrite) as folder:
        t1 = t3 = None
        files = ["tables.json", "tables.md"]
        if dataset is not None:
            encoders = load_encoders(clip_model=clip_model, dinov2_path=dinov2, inception_path=inception,
                                     ir_path=ir, ir_output=ir_output)
            t1 = table1(encoders, load_dataset(dataset), methods, folder, rerender)
            if _plot(folder / "table1.png", TABLE1, TABLE1_LABELS, {n: r["views"] for n, r in t1.items()},
                     {n: v for n, (v, _) in PAPER_TABLE1.items()}):
                files.append("table1.png")
        if ind_eval_dir is not None:
            objects, skipped = ind_eval.read_ind_eval(ind_eval_dir)
            scorers = ind_eval.load_scorers(lpips_dir=lpips, clip_model=clip_model, siglip_dir=siglip)
            t3 = table3(objects, scorers, ind_methods, folder)
            if _plot(folder / "table3.png", ind_eval.METRICS, ind_eval.LABELS,
                     {n: r["metrics"] for n, r in t3.items()}, ind_eval.PAPER):
                files.append("table3.png")
        (folder / "tables.json").write_text(json.dumps(
            {"table1": t1, "table3": t3, "paper_table1": PAPER_TABLE1, "paper_table3": ind_eval.PAPER,
             "files": files}, indent=1))
        text = markdown(t1, t3)
        text += "".join(f"\n![{f}]({f})\n" for f in files if f.endswith(".png"))
        (folder / "tables.md").write_text(text)
    return pathlib.Path(out).expanduser().absolute()
