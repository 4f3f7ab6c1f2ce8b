"""Benchmark of whole samples: prior pass, fusion weight, main pass with CFG, decode, for N objects per call.

    mvrag bench sample --config configs/tiny.py
    mvrag bench sample --config configs/tiny.py:size=medium --objects 1,4 --sample_steps 50 --prior_steps 10

Models are built from the experiment config with random weights (bench.host_random_params), so no release weights
are needed; the release folder only supplies the tokenizer, scheduler and image-processor settings, and must match
the config's sizes. Without --release the bundled tiny release's tokenizer and scheduler are used, with its CLIP
image processor resized to the config's vision tower (`sized_release`: full size takes 224 px crops), so
`mvrag bench sample --config configs/mvrag_sd21.py` needs no files. The first call (compiles
included, reported apart) and the steady state (mean of `calls` further calls, per stage) are timed separately.
"""

import json
import pathlib
import shutil
import tempfile
import time
from typing import Any, Sequence

import jax
import numpy as np

from mvrag_jax.models.random_params import host_random_params
from mvrag_jax.convert.components import COMPONENTS, abstract_params
from mvrag_jax.errors import PathNotFoundError, UsageError

# The bundled tiny release (tokenizer, scheduler, processors of configs/tiny.py's sizes) in a source checkout.
TINY_RELEASE = pathlib.Path(__file__).parents[2] / "tests" / "reference" / "tiny_release"


def random_pipeline(cfg: Any, release_dir: str | pathlib.Path, *, seed: int = 0, mesh: Any = None) -> Any:
    """A pipeline.Pipeline with every component sized by `cfg` (configs/*.py) and filled with random weights."""
    from mvrag_jax.pipeline import Pipeline
    from mvrag_jax.inputs.release import Release
    configs = {c.name: c.config_class.from_config(cfg) for c in COMPONENTS}
    params = {c.name: host_random_params(abstract_params(c, configs[c.name]), seed + i)
              for i, c in enumerate(COMPONENTS)}
    return Pipeline.from_components(Release.open(release_dir), configs, params, num_views=cfg.model.num_frames,
                                    dtype=str(cfg.runtime.dtype), mesh=mesh)


def sized_release(cfg: Any, out: pathlib.Path) -> pathlib.Path:
    """A copy of the tiny release's small files (no weights) in `out` whose CLIP image processor crops to the
    config's vision tower size (shortest edge = crop, as the official CLIP processor); DINOv2 interpolates its
    position grid, so its processor stays. Only tokenizer, scheduler and processors of a release are read here."""
    shutil.copytree(TINY_RELEASE, out, ignore=shutil.ignore_patterns("*.safetensors", "*.bin"))
    side = int(cfg.model.clip_vision.image_size)
    path = out / "feature_extractor" / "preprocessor_config.json"
    processor = json.loads(path.read_text())
    processor.update(crop_size={"height": side, "width": side}, size={"shortest_edge": side})
    path.write_text(json.dumps(processor, indent=2))
    return out


def _requests(objects: int, k: int, seed: int) -> list[Any]:
    from mvrag_jax.pipeline import ObjectRequest
    rng = np.random.default_rng(seed)
    return [ObjectRequest(prompt=f"a test object number {i}", seed=i,
                          retrieved=tuple(rng.integers(0, 256, (48, 40, 3), np.uint8) for _ in range(k)))
            for i in range(objects)]


def _timed(pipeline: Any, requests: list[Any], options: Any) -> tuple[float, dict[str, float]]:
    start = time.perf_counter()
    _, timings = pipeline.generate(requests, options)  # results come back as host arrays: the call has finished
    return time.perf_counter() - start, timings


def bench_sample(cfg: Any, objects: Sequence[int] = (1, 4), calls: int = 3, sample_steps: int = 50,
                 prior_steps: int = 10, guidance: float = 5.0, release_dir: str | pathlib.Path | None = None,
                 seed: int = 0) -> dict[str, Any]:
    """Timings of `pipeline.generate` for each number of objects per call; a JSON-able dict."""
    from mvrag_jax.pipeline import SamplingOptions
    from mvrag_jax.sharding import make_mesh
    if calls < 1 or not objects or min(objects) < 1:
        raise UsageError(f"bench sample needs calls >= 1 and objects >= 1, got calls={calls} objects={objects}")
    if release_dir is None:
        with tempfile.TemporaryDirectory(prefix="mvrag_bench_release_") as tmp:
            return bench_sample(cfg, objects, calls, sample_steps, prior_steps, guidance,
                                sized_release(cfg, pathlib.Path(tmp) / "release"), seed)
    release_dir = pathlib.Path(release_dir)
    if not release_dir.is_dir():
        raise PathNotFoundError(f"release folder {release_dir} does not exist; pass --release with a release whose "
                                "tokenizer and processors match the config")
    mesh = make_mesh(data=-1, fsdp=1, tensor=1, devices=jax.local_devices())
    with jax.default_matmul_precision(cfg.runtime.matmul_precision):
        pipeline = random_pipeline(cfg, release_dir, seed=seed, mesh=mesh)
        options = SamplingOptions(num_inference_steps=sample_steps, prior_steps=prior_steps, guidance_scale=guidance)
        runs = []
        for n in objects:
            requests = _requests(n, cfg.model.num_retrieved, seed)
            first_s, first = _timed(pipeline, requests, options)
            steady = [_timed(pipeline, requests, options) for _ in range(calls)]
            walls = [wall for wall, _ in steady]
            stages = {name: float(np.mean([t[name] for _, t in steady])) for name in steady[0][1]}
            runs.append({"objects": n, "first_call_s": first_s, "compile_s": first.get("compile"),
                         "call_s": float(np.mean(walls)), "call_min_s": min(walls),
                         "per_object_s": float(np.mean(walls)) / n, "stages_s": stages})
    return {
        "component": "sample",
        "backend": jax.default_backend(),
        "device": jax.devices()[0].device_kind,
        "local_devices": jax.local_device_count(),
        "dtype": str(cfg.runtime.dtype),
        "matmul_precision": cfg.runtime.matmul_precision,
        "num_views": pipeline.num_views,
        "image_size": pipeline.image_size,
        "num_retrieved": cfg.model.num_retrieved,
        "sample_steps": sample_steps,
        "prior_steps": prior_steps,
        "guidance": guidance,
        "calls": calls,
        "runs": runs,
    }
