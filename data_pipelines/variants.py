"""Semantic variants of renders (paper C.1), made with our own pipeline in single-view 2D mode.

The paper adds to the simulated retrievals images from an image-variation model (IP-Adapter + Stable Diffusion).
Ours is the same idea with the model we have: any checkpoint with an image branch (an MV-RAG release, or one
initialised from ImageDream) run as training's 2D mode, i.e. one view (num_frames 1), no camera, no ", 3d asset",
conditioned on one render of the object as its only retrieved image and on the object's caption, at a fixed fusion
weight (no prior pass). Every variant is written next to the renders, where mv_renders reads it:

    mvrag data variants --ckpt CKPT --renders DIR --per_object 2 [--variant_steps 50 --guidance 5 --seed 0]
    python -m data_pipelines.variants --ckpt CKPT --renders DIR --per_object 2

    <DIR>/<object_id>/variants/variant_000.png ...   at the conditioning render's size
    <DIR>/<object_id>/variants/variants.json         per file: the render it came from, seed, prompt, checkpoint

Variant n of an object conditions on one of its views (drawn with the seed) and samples from the seed
(seed, crc32(object_id), n): reruns give the same files, other --seed values other variants. Rebuild mv_renders
afterwards (`mvrag data build`) and set --config.mode_3d.variant_prob to mix them in.
"""

import dataclasses
import json
import os
import pathlib
import sys
import zlib

import numpy as np
from PIL import Image

from data_pipelines import background
from mvrag_jax.errors import MvragError

VARIANTS_DIR = "variants"


class VariantsError(MvragError, ValueError):
    pass


@dataclasses.dataclass(frozen=True)
class Settings:
    per_object: int = 2
    steps: int = 50              # DDIM steps
    guidance: float = 5.0        # classifier-free guidance scale
    # Text weight of the decoupled cross-attention (image weight 1.5 - this): 0.5 gives the image branch weight 1,
    # the text 0.5, the training combination of the paper (lambda f_txt + f_ret with our lambda = 0.5): a variation
    # led by the render, steered by its caption.
    fusion_weight: float = 0.5
    seed: int = 0
    batch: int = 8               # objects' variants per device call
    background: int = 127        # grey under RGBA renders when the model sees them


@dataclasses.dataclass(frozen=True)
class _Job:
    folder: pathlib.Path
    index: int                   # variant number within the object
    view: str                    # conditioning render file
    prompt: str
    seed: int


def object_folders(renders: pathlib.Path) -> list[pathlib.Path]:
    """Object folders of an mv_renders layout (those with cameras.json and caption.txt), sorted."""
    if not renders.is_dir():
        raise VariantsError(f"--renders {renders} is not a folder; pass the mv_renders manual_dir "
                            "(data_pipelines/mv_renders.py describes its layout)")
    folders = [p for p in sorted(renders.iterdir()) if (p / "cameras.json").is_file() and (p / "caption.txt").is_file()]
    if not folders:
        raise VariantsError(f"{renders} has no object folder with cameras.json and caption.txt; see "
                            "data_pipelines/mv_renders.py for the layout")
    return folders


def plan_jobs(renders: pathlib.Path, settings: Settings) -> list[_Job]:
    """Every variant to make: per object, per_object (view, seed) pairs drawn from (seed, crc32(object id))."""
    jobs = []
    for folder in object_folders(renders):
        views = [v.get("file") for v in json.loads((folder / "cameras.json").read_text()).get("views", [])]
        views = [v for v in views if isinstance(v, str) and (folder / v).is_file()]
        if not views:
            raise VariantsError(f"{folder}/cameras.json names no existing render; fix it or remove the folder")
        caption = (folder / "caption.txt").read_text().strip()
        for n in range(settings.per_object):
            draw = np.random.SeedSequence([settings.seed, zlib.crc32(folder.name.encode()), n]).generate_state(2)
            jobs.append(_Job(folder, n, views[int(draw[0]) % len(views)], caption, int(draw[1])))
    return jobs


def _load_render(path: pathlib.Path, grey: int) -> np.ndarray:
    return background.composite(background.decode_rgba(path.read_bytes()), grey)


def _write_png(image: np.ndarray, path: pathlib.Path) -> None:
    """Written to a temporary name, then renamed: a half-written variant is never visible."""
    tmp = path.with_name(f".{path.name}.tmp")
    Image.fromarray(image).save(tmp, format="png")
    os.replace(tmp, path)


def make_variants(renders: str | os.PathLike, *, ckpt: str | None = None, release: str | None = None,
                  settings: Settings = Settings(), pipeline=None) -> dict:
    """Write settings.per_object variants into every object folder of `renders`; returns a summary.

    `pipeline` (tests, notebooks): a Pipeline built with num_views=1 to use instead of loading ckpt/release.
    """
    from mvrag_jax.pipeline import ObjectRequest, Pipeline, SamplingOptions
    if settings.per_object < 1 or settings.batch < 1:
        raise VariantsError(f"per_object={settings.per_object}, batch={settings.batch}: both must be >= 1")
    jobs = plan_jobs(pathlib.Path(renders).expanduser(), settings)
    if pipeline is None:
        pipeline = Pipeline.load(ckpt=ckpt, release=release, num_views=1)
    if not pipeline.has_image_branch:
        raise VariantsError(f"{ckpt or release} has no image branch (no to_k_ip/to_v_ip, resampler): variants are "
                            "conditioned on a render; use an MV-RAG release or an ImageDream-initialised checkpoint")
    options = SamplingOptions(num_inference_steps=settings.steps, guidance_scale=settings.guidance, use_prior=False,
                              fusion_weight=settings.fusion_weight, mode="2d")
    written = {}
    for start in range(0, len(jobs), settings.batch):
        chunk = jobs[start:start + settings.batch]
        renders_in = [_load_render(job.folder / job.view, settings.background) for job in chunk]
        results, _ = pipeline.generate([ObjectRequest(job.prompt, (image,), seed=job.seed)
                                        for job, image in zip(chunk, renders_in)], options)
        for job, image, result in zip(chunk, renders_in, results):
            out = result.images[0]  # [H, W, 3] uint8, the one view
            if out.shape[:2] != image.shape[:2]:  # the render's size, so variants sit beside views like renders
                out = np.asarray(Image.fromarray(out).resize(image.shape[1::-1], Image.Resampling.BICUBIC))
            folder = job.folder / VARIANTS_DIR
            folder.mkdir(exist_ok=True)
            name = f"variant_{job.index:03d}.png"
            _write_png(out, folder / name)
            written.setdefault(job.folder, {})[name] = {"view": job.view, "seed": job.seed, "prompt": job.prompt,
                                                        "checkpoint": str(ckpt or release or "")}
    for folder, entries in written.items():
        manifest = folder / VARIANTS_DIR / "variants.json"
        existing = json.loads(manifest.read_text()) if manifest.is_file() else {}
        tmp = manifest.with_name(".variants.json.tmp")
        tmp.write_text(json.dumps({**existing, **entries}, indent=1, sort_keys=True))
        os.replace(tmp, manifest)
    return {"objects": len(written), "variants": len(jobs), "renders": str(renders)}


def main(argv: list[str]) -> int:
    import argparse
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ckpt", default=None, help="mvrag checkpoint with an image branch (`mvrag convert` output)")
    parser.add_argument("--release", default=None, help="official release folder, instead of --ckpt")
    parser.add_argument("--renders", required=True, help="mv_renders manual_dir (one folder per object)")
    parser.add_argument("--per_object", "--per-object", type=int, default=Settings.per_object)
    parser.add_argument("--variant_steps", "--variant-steps", type=int, default=Settings.steps)
    parser.add_argument("--guidance", type=float, default=Settings.guidance)
    parser.add_argument("--fusion_weight", "--fusion-weight", type=float, default=Settings.fusion_weight)
    parser.add_argument("--seed", type=int, default=Settings.seed)
    parser.add_argument("--batch", type=int, default=Settings.batch)
    args = parser.parse_args(argv)
    settings = Settings(per_object=args.per_object, steps=args.variant_steps, guidance=args.guidance,
                        fusion_weight=args.fusion_weight, seed=args.seed, batch=args.batch)
    try:
        print(json.dumps(make_variants(args.renders, ckpt=args.ckpt, release=args.release, settings=settings)))
    except (VariantsError, FileNotFoundError, ValueError) as e:
        print(f"variants: error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
