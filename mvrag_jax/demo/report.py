"""The demo's report: how often the generated objects show the prompted concept, per group, and one figure.

    python -m mvrag_jax.demo.report out/demo/generated/retrieval out/demo/generated/text_only \
        --concepts configs/demo_concepts.json --out out/demo

Every object that `mvrag generate` finished in the given folders (`record.json` + `view_*.png`) is one row:
- its group: "ood" when the prompt names a concept of the concepts file ("a dax": a look only retrieved images
  carry), else "in_domain" (the prompt names a colour and a shape: "a red cube"); "/retrieval" when the record lists
  retrieved files, else "/text_only" (the MVDream baseline: no image tokens at all);
- what it should show (the concept's colour and shape) and what it shows (mvrag_jax/demo/score.py: colour rule and
  nearest rendered template over all its views);
- the fusion weight the prior pass gave it (record "fusion_weight"; none for text-only objects).

OUT gets report.json ({"groups": {group: {objects, accuracy, colour_accuracy, shape_accuracy,
mean_fusion_weight}}, "objects": [...]}), report.md (the table and the figure) and report.png (a row per group:
each object's first retrieved image, if any, then its views, with what the scorer read).
"""

import dataclasses
import json
import pathlib
import sys
from typing import Any, Mapping, Sequence

import numpy as np
from PIL import Image, ImageDraw

from data_pipelines import shapes
from mvrag_jax.demo.score import DEFAULT_PALETTE, DEFAULT_SHAPES, ShapeScorer

GROUPS = ("in_domain/retrieval", "in_domain/text_only", "ood/retrieval", "ood/text_only")
RECORD = "record.json"


class ReportError(ValueError):
    """Outputs the report cannot score (no objects, a prompt naming no concept)."""


@dataclasses.dataclass(frozen=True)
class ObjectRow:
    folder: str
    prompt: str
    group: str
    want: tuple[str, str]                 # (colour, shape) the prompt asks for
    got: tuple[str | None, str]           # what the scorer read
    fusion_weight: float | None
    retrieved: tuple[str, ...]            # retrieved image paths (record retrieval.files)

    @property
    def colour_ok(self) -> bool:
        return self.got[0] == self.want[0]

    @property
    def shape_ok(self) -> bool:
        return self.got[1] == self.want[1]

    @property
    def ok(self) -> bool:
        return self.colour_ok and self.shape_ok


def prompt_concept(prompt: str, concepts: Mapping[str, tuple[str, str]],
                   palette: Sequence[str] = DEFAULT_PALETTE) -> tuple[str, tuple[str, str]]:
    """("ood" | "in_domain", (colour, shape)) of a prompt: a concept name of `concepts`, else one colour of
    `palette` and one shape of data_pipelines/shapes.py."""
    words = prompt.lower().replace(",", " ").replace(".", " ").split()
    named = [w for w in words if w in concepts]
    if named:
        return "ood", concepts[named[0]]
    colours = [w for w in words if w in palette]
    kinds = [w for w in words if w in DEFAULT_SHAPES]
    if len(colours) != 1 or len(kinds) != 1:
        raise ReportError(f"prompt {prompt!r} names neither a concept of {sorted(concepts)} nor one colour of "
                          f"{list(palette)} and one shape of {list(DEFAULT_SHAPES)}; the report cannot score it")
    return "in_domain", (colours[0], kinds[0])


def read_views(folder: pathlib.Path) -> np.ndarray:
    paths = sorted(folder.glob("view_*.png"), key=lambda p: int(p.stem.split("_")[1]))
    return np.stack([np.asarray(Image.open(p).convert("RGB")) for p in paths])


def score_runs(runs: Sequence[str | pathlib.Path], concepts: Mapping[str, tuple[str, str]],
               palette: Sequence[str] = DEFAULT_PALETTE) -> list[ObjectRow]:
    """One row per finished object of the `mvrag generate` output folders `runs`."""
    rows, scorers = [], {}
    for run in runs:
        for record_path in sorted(pathlib.Path(run).glob(f"*/{RECORD}")):
            record = json.loads(record_path.read_text())
            domain, want = prompt_concept(record["prompt"], concepts, palette)
            files = tuple(f["path"] for f in (record.get("retrieval") or {}).get("files", []))
            views = read_views(record_path.parent)
            key = (views.shape, float(record["settings"]["elevation"]))
            if key not in scorers:
                scorers[key] = ShapeScorer(image_size=views.shape[1], elevation=key[1], num_views=views.shape[0],
                                           palette=palette)
            result = scorers[key].classify(views)
            weight = record.get("fusion_weight")
            rows.append(ObjectRow(str(record_path.parent), record["prompt"],
                                  f"{domain}/{'retrieval' if files else 'text_only'}", want,
                                  (result.colour, result.shape), None if weight is None else float(weight), files))
    if not rows:
        raise ReportError(f"no finished object (a folder with {RECORD}) in {[str(r) for r in runs]}; run `mvrag "
                          "generate` into them first")
    return rows


def summarise(rows: Sequence[ObjectRow]) -> dict[str, Any]:
    """{"groups": {group: {objects, accuracy, colour_accuracy, shape_accuracy, mean_fusion_weight}}} over the groups
    that have objects (mean_fusion_weight None where no object has one, as text-only objects)."""
    groups = {}
    for group in GROUPS + tuple(sorted({r.group for r in rows} - set(GROUPS))):
        members = [r for r in rows if r.group == group]
        if not members:
            continue
        weights = [r.fusion_weight for r in members if r.fusion_weight is not None]
        mean = lambda values: float(np.mean(values))
        groups[group] = {"objects": len(members), "accuracy": mean([r.ok for r in members]),
                         "colour_accuracy": mean([r.colour_ok for r in members]),
                         "shape_accuracy": mean([r.shape_ok for r in members]),
                         "mean_fusion_weight": mean(weights) if weights else None}
    return {"groups": groups}


def _tile(image: np.ndarray, side: int) -> Image.Image:
    return Image.fromarray(np.asarray(image, np.uint8)).convert("RGB").resize((side, side), Image.NEAREST)


def figure(rows: Sequence[ObjectRow], summary: dict[str, Any], per_group: int = 4, side: int = 72) -> Image.Image:
    """A row per group: up to `per_group` objects, each its first retrieved image (blank without), then its views."""
    groups = [g for g in summary["groups"]]
    views = max(len(read_views(pathlib.Path(r.folder))) for r in rows[:1])
    label_w, gap, text_h = 150, 10, 26
    block = side * (1 + views) + gap
    width, row_h = label_w + per_group * block, side + text_h + gap
    canvas = Image.new("RGB", (width, row_h * len(groups)), "white")
    draw = ImageDraw.Draw(canvas)
    for g, group in enumerate(groups):
        top, stats = g * row_h, summary["groups"][group]
        weight = stats["mean_fusion_weight"]
        draw.text((4, top + 4), group, fill="black")
        draw.text((4, top + 18), f"accuracy {stats['accuracy']:.2f}", fill="black")
        draw.text((4, top + 32), f"({stats['objects']} objects)", fill="black")
        if weight is not None:
            draw.text((4, top + 46), f"fusion weight {weight:.2f}", fill="black")
        for i, row in enumerate([r for r in rows if r.group == group][:per_group]):
            left = label_w + i * block
            if row.retrieved and pathlib.Path(row.retrieved[0]).is_file():
                canvas.paste(_tile(np.asarray(Image.open(row.retrieved[0]).convert("RGB")), side), (left, top))
            else:
                draw.rectangle((left, top, left + side - 1, top + side - 1), outline=(200, 200, 200))
            for v, view in enumerate(read_views(pathlib.Path(row.folder))):
                canvas.paste(_tile(view, side), (left + side * (1 + v), top))
            mark = "ok" if row.ok else "no"
            draw.text((left, top + side + 2), f"{mark} {row.prompt!r}", fill="black" if row.ok else (180, 0, 0))
            draw.text((left, top + side + 13), f"read: {row.got[0]} {row.got[1]}", fill=(90, 90, 90))
    return canvas


def markdown(summary: dict[str, Any], figure_name: str) -> str:
    lines = ["# MV-RAG demo: does the generated object show the prompted concept?", "",
             "| group | objects | accuracy | colour | shape | mean fusion weight |", "|---|---|---|---|---|---|"]
    for group, s in summary["groups"].items():
        weight = "-" if s["mean_fusion_weight"] is None else f"{s['mean_fusion_weight']:.3f}"
        lines.append(f"| {group} | {s['objects']} | {s['accuracy']:.2f} | {s['colour_accuracy']:.2f} | "
                     f"{s['shape_accuracy']:.2f} | {weight} |")
    classes = len(DEFAULT_PALETTE) * len(DEFAULT_SHAPES)
    lines += ["", f"accuracy: colour and shape both right (mvrag_jax/demo/score.py); chance 1/{classes} with "
              f"{len(DEFAULT_PALETTE)} colours x {len(DEFAULT_SHAPES)} shapes.", "", f"![a row per group]({figure_name})",
              ""]
    return "\n".join(lines)


def write_report(runs: Sequence[str | pathlib.Path], concepts: Mapping[str, tuple[str, str]],
                 out_dir: str | pathlib.Path, palette: Sequence[str] = DEFAULT_PALETTE) -> dict[str, Any]:
    rows = score_runs(runs, concepts, palette)
    summary = summarise(rows)
    out = pathlib.Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    objects = [{"folder": r.folder, "prompt": r.prompt, "group": r.group, "want": list(r.want), "got": list(r.got),
                "ok": r.ok, "fusion_weight": r.fusion_weight} for r in rows]
    (out / "report.json").write_text(json.dumps({**summary, "objects": objects}, indent=1))
    figure(rows, summary).save(out / "report.png")
    (out / "report.md").write_text(markdown(summary, "report.png"))
    return summary


def main(argv: list[str]) -> int:
    import argparse
    from data_pipelines.shape_collection import ConceptError, read_concepts
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", help="`mvrag generate` output folders")
    parser.add_argument("--concepts", required=True,
                        help="JSON {name: \"colour shape\"}, e.g. configs/demo_concepts.json")
    parser.add_argument("--out", required=True)
    parser.add_argument("--colours", default=",".join(DEFAULT_PALETTE), help="the palette the demo trained on")
    args = parser.parse_args(argv)
    try:
        summary = write_report(args.runs, read_concepts(args.concepts), args.out, args.colours.split(","))
    except (ReportError, ConceptError) as e:
        print(f"demo report: error: {e}", file=sys.stderr)
        return 2
    for group, s in summary["groups"].items():
        weight = "" if s["mean_fusion_weight"] is None else f", mean fusion weight {s['mean_fusion_weight']:.3f}"
        print(f"{group}: accuracy {s['accuracy']:.2f} (colour {s['colour_accuracy']:.2f}, shape "
              f"{s['shape_accuracy']:.2f}) over {s['objects']} objects{weight}")
    print(f"wrote {pathlib.Path(args.out) / 'report.json'}, report.md, report.png")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
