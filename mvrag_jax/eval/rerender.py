"""The re-rendered setting of the paper (C.5, Table 1 right half): every object's 4 generated views -> LGM 3D
Gaussians -> 18 views on a circle (recon/reconstruct.py `rerender_views`), scored with the same metrics as the
4 views. `mvrag eval --rerender --lgm model_fp16_fixrot.safetensors` adds them to metrics.json ("rerendered") and
report.md, and writes the renders under OUT/rerendered/<prompt_id>[/seed_<s>]/view_<i>.png.
"""

import dataclasses
import pathlib
import time
from typing import Any, Sequence

from PIL import Image

from mvrag_jax.convert.lgm import load_lgm
from mvrag_jax.eval.report import markdown_table
from mvrag_jax.eval.score import Sample
from mvrag_jax.recon.reconstruct import ReconstructSettings, rerender_views
from mvrag_jax.errors import UsageError


def rerender_samples(samples: Sequence[Sample], lgm_path: str, *, elevation: float, input_size: int = 256,
                     render_size: int = 256) -> tuple[list[Sample], float]:
    """Samples whose views are the LGM re-renders [18, render_size, render_size, 3]; and the seconds it took
    (load + reconstruct + render)."""
    began = time.perf_counter()
    bad = sorted({s.prompt_id for s in samples if len(s.views) != 4})
    if bad:
        raise UsageError(f"--rerender: LGM reconstructs from exactly 4 views; prompts {bad[:5]} have other counts "
                         "(generate with --num-views 4)")
    config, params = load_lgm(lgm_path, input_size=input_size)
    renders = rerender_views(config, params, [s.views for s in samples], elevation=elevation,
                             settings=ReconstructSettings(render_size=render_size))
    return [dataclasses.replace(s, views=r) for s, r in zip(samples, renders)], time.perf_counter() - began


def write_rerendered(folder: pathlib.Path, samples: Sequence[Sample], summary: dict[str, Any]) -> None:
    """The renders as view_<i>.png files, and the re-rendered table appended to report.md."""
    for sample in samples:
        sub = folder / "rerendered" / sample.prompt_id
        sub = sub / f"seed_{sample.seed}" if sample.seed is not None else sub
        sub.mkdir(parents=True, exist_ok=True)
        for i, view in enumerate(sample.views):
            Image.fromarray(view).save(sub / f"view_{i}.png")
    with open(folder / "report.md", "a") as f:
        f.write("\n## Re-rendered (LGM reconstruction, 18 views on a circle; paper C.5)\n\n"
                "The paper's re-rendered MV-RAG column: CLIP 74.28, DINOv2 39.61, IR 66.59, FID 80.54, IS 12.33.\n\n"
                + markdown_table(summary) + "\n")


def rerender_folder(views_dir: str | pathlib.Path, out_dir: str | pathlib.Path, lgm_path: str, *, elevation: float,
                    input_size: int = 256, render_size: int = 256) -> pathlib.Path:
    """`mvrag eval --tables --rerender`'s re-renderer (eval/tables.py Rerender): every <id>/view_<i>.png object of
    `views_dir` -> its 18 LGM re-renders as `out_dir`/<id>/view_<i>.png; returns `out_dir`."""
    from mvrag_jax.eval.run import read_views
    folders = sorted(p for p in pathlib.Path(views_dir).iterdir() if p.is_dir() and any(p.glob("view_*.png")))
    if not folders:
        raise UsageError(f"--rerender: no <id>/view_<i>.png objects in {views_dir}; point --images at generated views")
    samples = [Sample(prompt_id=f.name, seed=None, views=read_views(f)) for f in folders]
    rendered, _ = rerender_samples(samples, lgm_path, elevation=elevation, input_size=input_size,
                                   render_size=render_size)
    out = pathlib.Path(out_dir)
    for sample in rendered:
        (out / sample.prompt_id).mkdir(parents=True, exist_ok=True)
        for i, view in enumerate(sample.views):
            Image.fromarray(view).save(out / sample.prompt_id / f"view_{i}.png")
    return out
