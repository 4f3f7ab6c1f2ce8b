"""`mvrag bench all`: every benchmark of this checkout in one JSON, with the machine it ran on; `mvrag bench compare`.

    mvrag bench all --config configs/tiny.py --out bench_cpu.json [--steps 3]
    mvrag bench compare bench_cpu.json bench_tpu.json        # B / A for every number both files hold

The file holds {"machine": {...}, "benchmarks": {name: figures | {"error": message}}}. Benchmarks: `unet`
(bench.bench_unet), `data_<mode>` (data_pipelines/bench.py on configs/data.py:size=tiny), and those that exist in
this checkout: `sample` (mvrag_jax/bench/sample.py); and `train` (mvrag_jax/bench/train.py: the train step on one
device, of configs/train.py:size=tiny unless --config is itself a train config; with `find_max_batch` on a GPU/TPU
the largest batch whose step runs and its samples/s), `attention` (mvrag_jax/bench/attention.py: each kernel this
backend runs against "xla" at the config's attention shapes; a kernel out of tolerance fails the benchmark).
`objects`, `sample_steps`, `prior_steps` set the sample benchmark's runs. A benchmark that raises is recorded
with its error and makes the command exit 1 after the file is written, so one broken benchmark neither hides the
others nor passes silently.
"""

import datetime
import importlib.util
import json
import os
import pathlib
import platform
import subprocess
import tempfile
import time
from typing import Any, Callable

import jax

from mvrag_jax.errors import PathNotFoundError, UsageError

DATA_MODES = ("3d", "2d", "mixed")
REPO = pathlib.Path(__file__).resolve().parents[2]


def machine() -> dict[str, Any]:
    """Where and with what the figures were taken."""
    import flax
    import numpy as np
    try:
        commit = subprocess.run(["git", "-C", str(REPO), "rev-parse", "HEAD"], capture_output=True, text=True,
                                timeout=10).stdout.strip() or None
        dirty = bool(subprocess.run(["git", "-C", str(REPO), "status", "--porcelain", "--untracked-files=no"],
                                    capture_output=True, text=True, timeout=10).stdout.strip())
    except (OSError, subprocess.SubprocessError):
        commit, dirty = None, None  # not a git checkout (an installed wheel)
    devices = jax.devices()
    return {"hostname": platform.node(), "platform": platform.platform(), "python": platform.python_version(),
            "cpu_count": os.cpu_count(), "backend": jax.default_backend(), "device_kind": devices[0].device_kind,
            "device_count": len(devices), "process_count": jax.process_count(),
            "versions": {"jax": jax.__version__, "jaxlib": jax.lib.__version__ if hasattr(jax.lib, "__version__")
                         else None, "flax": flax.__version__, "numpy": np.__version__},
            "git_commit": commit, "git_dirty": dirty, "utc": datetime.datetime.now(datetime.UTC).isoformat()}


def benchmarks(cfg: Any, steps: int, data_dir: str | None = None, *, objects: tuple[int, ...] = (1, 4),
               sample_steps: int = 50, prior_steps: int = 10,
               find_max_batch: bool = False) -> dict[str, Callable[[], dict]]:
    """name -> zero-argument benchmark; optional modules join when this checkout has them. `data_dir`: where the
    data benchmarks build their tiny synthetic dataset (default: configs/data.py's)."""
    from mvrag_jax.bench import unet as bench
    table: dict[str, Callable[[], dict]] = {"unet": lambda: bench.bench_unet(cfg, steps=steps)}
    if importlib.util.find_spec("mvrag_jax.bench.sample") is not None:
        from mvrag_jax.bench import sample as bench_sample
        table["sample"] = lambda: bench_sample.bench_sample(cfg, objects=objects, calls=steps,
                                                            sample_steps=sample_steps, prior_steps=prior_steps)
    table["train"] = lambda: _train(cfg, steps, find_max_batch)
    table["attention"] = lambda: _attention(cfg, steps)

    def data(mode: str) -> Callable[[], dict]:
        def run() -> dict:
            from configs import data as data_config
            from data_pipelines import bench as data_bench
            data_cfg = data_config.get_config("size=tiny")
            if data_dir is not None:
                data_cfg.data_dir = str(data_dir)
            return data_bench.bench(data_cfg, mode, steps)
        return run
    table.update({f"data_{mode}": data(mode) for mode in DATA_MODES})
    return table


def _train(cfg: Any, steps: int, find_max_batch: bool = False) -> dict:
    """The train step of `cfg` if it is a train config, else of configs/train.py:size=tiny, on one device (with
    `find_max_batch`: the largest batch that runs there)."""
    from mvrag_jax.bench import train as bench_train
    if "train" not in cfg:
        from configs import train as train_config
        cfg = train_config.get_config("size=tiny")
    if find_max_batch:
        return bench_train.find_max_batch(cfg, ["data=1"], steps=steps)
    return bench_train.bench_train(cfg, ["data=1"], steps=steps)


def _attention(cfg: Any, steps: int) -> dict:
    """Kernel parity (and speed) at the config's shapes; out of tolerance raises, so the suite records a failure."""
    from mvrag_jax.bench import attention
    figures = attention.bench_attention(cfg, calls=steps)
    if not figures["ok"]:
        bad = [f"{r['kernel']}/{r['case']}/{r['dtype']} err {r['max_abs_err']:.2e}" for r in figures["cases"]
               if not r["ok"]]
        raise AssertionError(f"attention kernels out of tolerance: {'; '.join(bad)}")
    return figures


def run_all(cfg: Any, out: str | os.PathLike, *, steps: int = 3, only: list[str] | None = None,
            data_dir: str | None = None, **options: Any) -> tuple[pathlib.Path, list[str]]:
    """Run every benchmark (or `only` these), write the JSON atomically; returns (path, names that failed).
    `options`: `benchmarks`' keywords (objects, sample_steps, prior_steps, find_max_batch)."""
    table = benchmarks(cfg, steps, data_dir, **options)
    unknown = sorted(set(only or ()) - set(table))
    if unknown:
        raise UsageError(f"unknown benchmarks {unknown}; this checkout has {sorted(table)}")
    results, failed = {}, []
    for name, fn in table.items():
        if only and name not in only:
            continue
        began = time.perf_counter()
        try:
            figures = fn()
        except Exception as e:  # recorded in the file and turned into exit 1 by the caller
            figures, failed = {"error": f"{type(e).__name__}: {e}"}, failed + [name]
        results[name] = {**figures, "wall_s": time.perf_counter() - began}
        print(f"bench {name}: {'FAILED ' + results[name]['error'] if name in failed else 'done'} "
              f"({results[name]['wall_s']:.1f} s)", flush=True)
    path = pathlib.Path(out).expanduser().absolute()
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    with os.fdopen(fd, "w") as f:
        json.dump({"machine": machine(), "steps": steps, "benchmarks": results}, f, indent=1)
    os.replace(tmp, path)
    return path, failed


def _numbers(tree: Any, prefix: str = "") -> dict[str, float]:
    if isinstance(tree, dict):
        out = {}
        for key, value in tree.items():
            out.update(_numbers(value, f"{prefix}.{key}" if prefix else str(key)))
        return out
    if isinstance(tree, (int, float)) and not isinstance(tree, bool):
        return {prefix: float(tree)}
    return {}


def is_measurement(key: str) -> bool:
    """Times, rates and byte counts are measured; other numbers (batch_size, image_size, ...) are settings."""
    leaf = key.rsplit(".", 1)[-1]
    return leaf.endswith(("_s", "_bytes"))


def compare(a: str | os.PathLike, b: str | os.PathLike) -> str:
    """A table of every measurement under `benchmarks` present in both files (A, B and B / A), then the settings
    that differ between them (a ratio of runs with other settings compares different work)."""
    loaded = []
    for path in (a, b):
        path = pathlib.Path(path)
        if not path.is_file():
            raise PathNotFoundError(f"{path} does not exist; write it with `mvrag bench all --out {path}`")
        try:
            loaded.append(json.loads(path.read_text()))
        except json.JSONDecodeError as e:
            raise UsageError(f"{path} is not JSON ({e}); write it with `mvrag bench all`") from e
    if not all("benchmarks" in x for x in loaded):
        raise UsageError("both files must come from `mvrag bench all` (a 'benchmarks' object at the top)")
    left, right = (_numbers(x["benchmarks"]) for x in loaded)
    shared = [k for k in left if k in right]
    if not shared:
        raise UsageError(f"{a} and {b} share no benchmark figure; run the same benchmarks on both machines")
    machine_of = lambda x: f"{x['machine'].get('backend')}/{x['machine'].get('device_kind')} " \
                           f"@{(x['machine'].get('git_commit') or '?')[:8]}"
    width = max(len(k) for k in shared)
    lines = [f"A = {a} ({machine_of(loaded[0])})", f"B = {b} ({machine_of(loaded[1])})",
             f"{'figure':{width}s} {'A':>12s} {'B':>12s} {'B/A':>8s}"]
    for key in filter(is_measurement, shared):
        ratio = right[key] / left[key] if left[key] else float("nan")
        lines.append(f"{key:{width}s} {left[key]:12.4g} {right[key]:12.4g} {ratio:8.3f}")
    lines += [f"setting differs: {key} A={left[key]:g} B={right[key]:g}" for key in shared
              if not is_measurement(key) and left[key] != right[key]]
    return "\n".join(lines)
