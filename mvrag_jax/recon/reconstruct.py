"""`mvrag reconstruct`: generated views -> LGM 3D Gaussians -> gaussians.ply, 18 renders on a circle and a GIF.

    mvrag reconstruct --views OUT_OF_GENERATE --lgm model_fp16_fixrot.safetensors --out ASSETS

`--views` is one object folder (view_0.png ... view_3.png, MVDream order, as `mvrag generate` writes them) or a
folder of such object folders. Each object gets ASSETS/<object>/:

    gaussians.ply              standard 3DGS properties (recon/ply.py), pruned at opacity 0.005 like LGM
    render_00.png ... _17.png  18 views every 20 deg on a circle at the generation elevation, radius 1.5, FOV 49.1
    turntable.gif              those renders as a loop
    recon.json                 written last (marks the object done; a rerun skips it): elevation, Gaussian
                               counts, seconds per stage

The generation elevation is the object's record.json `settings.elevation` when present, else `--elevation`; it is
passed through to LGM's input rays (recon/cameras.py says why and what differs from LGM's elevation-0 default).
Objects run `batch` at a time, padded to a multiple of the local devices and split over them (data parallel, as
generation); params are replicated. `rerender_views` is the same path without files, for `mvrag eval --rerender`.
"""

import dataclasses
import json
import os
import pathlib
import re
import time
from typing import Any, Sequence

import jax
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec
from PIL import Image

from mvrag_jax.convert.lgm import load_lgm
from mvrag_jax.models import lgm
from mvrag_jax.pipeline.generate import RECORD, write_json, write_png
from mvrag_jax.recon import cameras, ply, render
from mvrag_jax.sharding import make_mesh
from mvrag_jax.errors import MvragError, PathNotFoundError

VIEW_FILE = re.compile(r"^view_(\d+)\.(png|jpg|jpeg|webp)$", re.IGNORECASE)
RECON_RECORD = "recon.json"
DEFAULT_ELEVATION = 15.0  # MV-RAG's generation default (pipeline/generate.py Settings.elevation)


class ReconstructError(MvragError, ValueError):
    """Reconstruction cannot run as asked; the message names the input and the fix."""


@dataclasses.dataclass(frozen=True)
class ReconstructSettings:
    num_renders: int = 18       # the paper's re-rendered views (C.5)
    render_size: int = 256      # the generated views' size; LGM trains its renders at 512
    render_elevation: float | None = None  # MV-RAG sign (> 0 above); None: the generation elevation
    batch: int = 1
    view_batch: int = 1         # renders computed at once per object (memory: tiles x N table + chunk per view)
    gif_ms: int = 100           # per frame

    def check(self) -> "ReconstructSettings":
        if min(self.num_renders, self.render_size, self.batch, self.view_batch) < 1:
            raise ReconstructError(f"num_renders {self.num_renders}, render_size {self.render_size}, batch "
                                   f"{self.batch} and view_batch {self.view_batch} must all be >= 1")
        return self


def read_views(folder: pathlib.Path) -> np.ndarray:
    """view_<i>.* of one object, in view order -> [4, H, W, 3] uint8 (LGM takes exactly 4 MVDream-layout views)."""
    files = sorted((int(m.group(1)), p) for p in folder.iterdir() if (m := VIEW_FILE.match(p.name)))
    if len(files) != 4:
        raise ReconstructError(f"{folder} has {len(files)} view_<i> images; LGM reconstructs from exactly 4 views "
                               "(generate with --num-views 4)")
    views = np.stack([np.asarray(Image.open(p).convert("RGB")) for _, p in files])  # one size: np.stack checks
    return views


def find_objects(views_dir: str | os.PathLike) -> list[pathlib.Path]:
    """The object folders under `views_dir` (itself, when it holds view_<i> files)."""
    root = pathlib.Path(views_dir).expanduser().absolute()
    if not root.is_dir():
        raise PathNotFoundError(f"--views folder {root} does not exist; pass the --out folder of `mvrag generate` "
                                "or one object folder of it")
    has_views = lambda p: any(VIEW_FILE.match(f.name) for f in p.iterdir())
    if has_views(root):
        return [root]
    objects = sorted(p for p in root.iterdir() if p.is_dir() and has_views(p))
    if not objects:
        raise ReconstructError(f"{root} holds no view_<i>.png files, nor folders of them; pass `mvrag generate`'s "
                               "--out folder")
    return objects


def generation_elevation(folder: pathlib.Path, default: float) -> float:
    """settings.elevation of the object's record.json (mvrag generate), else `default`."""
    record = folder / RECORD
    if record.is_file():
        value = json.loads(record.read_text()).get("settings", {}).get("elevation")
        if value is not None:
            return float(value)
    return float(default)


def _placement(batch: int) -> tuple[int, Any, Any]:
    """(padded batch, batch sharding, replicated sharding) over the local devices."""
    mesh = make_mesh(data=-1, fsdp=1, tensor=1, devices=jax.local_devices())
    devices = mesh.shape["data"]
    return -(-batch // devices) * devices, NamedSharding(mesh, PartitionSpec("data")), NamedSharding(mesh, PartitionSpec())


def place_params(params: Any) -> Any:
    """LGM params replicated over the local devices once, so batches do not copy them again."""
    return jax.device_put(params, _placement(1)[2])


def reconstruct_batch(config: lgm.LGMConfig, params: Any, views: np.ndarray, elevations: Sequence[float],
                      settings: ReconstructSettings) -> tuple[np.ndarray, np.ndarray, dict[str, float]]:
    """Views [b, 4, H, W, 3] uint8 (MVDream order) at generation `elevations` (MV-RAG sign) -> Gaussians
    [b, N, 14] and renders [b, num_renders, S, S, 3] uint8, plus seconds per stage (blocking, so they are honest)."""
    b = len(views)
    # Every call runs at settings.batch (padded with the last object): a short last chunk reuses the compiled program
    # instead of compiling another shape, and an object's renders do not depend on how many shared its call.
    padded, batch_sharding, replicated = _placement(max(b, settings.batch))
    pad = lambda x: np.concatenate([x, np.repeat(x[-1:], padded - b, 0)]) if padded > b else x
    began = time.perf_counter()
    inputs = np.concatenate([cameras.lgm_inputs(views[i:i + 1].astype(np.float32) / 255.0,
                                                cameras.lgm_elevation(e), config.input_size)
                             for i, e in enumerate(elevations)])
    render_elevations = [e if settings.render_elevation is None else settings.render_elevation for e in elevations]
    azimuths = cameras.circle_azimuths(settings.num_renders)
    orbit = np.stack([cameras.orbit_views(cameras.lgm_elevation(e), azimuths) for e in render_elevations])
    params = jax.device_put(params, replicated)  # a no-op when the caller placed them already (`place_params`)
    gaussians = lgm.forward_gaussians(config, params, jax.device_put(pad(inputs), batch_sharding))
    gaussians.block_until_ready()
    seconds = {"lgm": time.perf_counter() - began}
    began = time.perf_counter()
    size = settings.render_size
    images, _ = render.render_views(gaussians, jax.device_put(pad(orbit), batch_sharding),
                                    render.RenderSettings(height=size, width=size), view_batch=settings.view_batch)
    images = np.asarray(images)[:b]
    seconds["render"] = time.perf_counter() - began
    return np.asarray(gaussians)[:b], np.round(images * 255).astype(np.uint8), seconds


def rerender_views(config: lgm.LGMConfig, params: Any, views: Sequence[np.ndarray], elevation: float = DEFAULT_ELEVATION,
                   settings: ReconstructSettings = ReconstructSettings()) -> list[np.ndarray]:
    """The re-rendered setting (paper C.5): each object's 4 views [4, H, W, 3] uint8 -> its `num_renders` renders
    [num_renders, S, S, 3] uint8 of the LGM reconstruction, `settings.batch` objects per call."""
    settings.check()
    params, out = place_params(params), []
    for start in range(0, len(views), settings.batch):
        chunk = np.stack(views[start:start + settings.batch])
        _, renders, _ = reconstruct_batch(config, params, chunk, [elevation] * len(chunk), settings)
        out += list(renders)
    return out


def write_gif(path: pathlib.Path, frames: Sequence[np.ndarray], ms: int) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        first, *rest = [Image.fromarray(f) for f in frames]
        first.save(tmp, format="GIF", save_all=True, append_images=rest, duration=ms, loop=0)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def write_asset(folder: pathlib.Path, gaussians: np.ndarray, renders: np.ndarray, record: dict[str, Any],
                gif_ms: int) -> dict[str, Any]:
    folder.mkdir(parents=True, exist_ok=True)
    began = time.perf_counter()
    kept = ply.write_ply(folder / "gaussians.ply", gaussians)
    names = [f"render_{i:02d}.png" for i in range(len(renders))]
    for name, image in zip(names, renders):
        write_png(folder / name, image)
    write_gif(folder / "turntable.gif", renders, gif_ms)
    record = {**record, "gaussians": int(len(gaussians)), "gaussians_in_ply": kept, "renders": names,
              "gif": "turntable.gif", "ply": "gaussians.ply"}
    record["seconds"]["write"] = time.perf_counter() - began
    write_json(folder / RECON_RECORD, record)  # last: marks the object complete
    return record


def run(*, views: str | os.PathLike, lgm_path: str | os.PathLike, out: str | os.PathLike,
        elevation: float = DEFAULT_ELEVATION, input_size: int = 256, dtype: str = "float32",
        settings: ReconstructSettings = ReconstructSettings()) -> dict[str, Any]:
    """`mvrag reconstruct`: every object under `views` not yet done in `out`; returns a summary."""
    settings.check()
    objects = find_objects(views)
    out = pathlib.Path(out).expanduser().absolute()
    mine = objects[jax.process_index()::jax.process_count()]  # each process of a multi-host job takes every n-th
    todo = [o for o in mine if not (out / o.name / RECON_RECORD).is_file()]
    summary = {"out": str(out), "objects": len(mine), "skipped": len(mine) - len(todo), "reconstructed": 0}
    if not todo:
        return summary
    config, params = load_lgm(lgm_path, input_size=input_size, dtype=dtype)
    params = place_params(params)
    seconds: dict[str, float] = {}
    for start in range(0, len(todo), settings.batch):
        chunk = todo[start:start + settings.batch]
        batch_views = np.stack([read_views(o) for o in chunk])
        elevations = [generation_elevation(o, elevation) for o in chunk]
        gaussians, renders, stage = reconstruct_batch(config, params, batch_views, elevations, settings)
        for folder, g, r, e in zip(chunk, gaussians, renders, elevations):
            record = {"views": str(folder), "lgm": str(pathlib.Path(lgm_path).absolute()), "generation_elevation": e,
                      "render_elevation": e if settings.render_elevation is None else settings.render_elevation,
                      "render_azimuths": cameras.circle_azimuths(settings.num_renders).tolist(),
                      "render_size": settings.render_size, "radius": cameras.CAM_RADIUS, "fovy": cameras.FOVY,
                      "seconds": {k: v / len(chunk) for k, v in stage.items()}, "batch": len(chunk)}
            write_asset(out / folder.name, g, r, record, settings.gif_ms)
            for k, v in record["seconds"].items():
                seconds[k] = seconds.get(k, 0.0) + v
        summary["reconstructed"] += len(chunk)
    summary["seconds_per_object"] = {k: v / summary["reconstructed"] for k, v in seconds.items()}
    return summary
