"""Examples per second of the training loader, per mode, on this machine.

    python -m data_pipelines.bench --config configs/data.py:size=tiny --config.data_dir /tmp/mvrag_data
    python -m data_pipelines.bench --config configs/data.py --config.loader.num_workers 2 --modes 3d,2d --steps 20

Building datasets (if needed), starting workers and the `--warmup` batches are reported as startup_s; then
`--steps` batches are timed for the rates. One JSON line per mode.
"""

import json
import sys
import time

import grain
import ml_collections as mlc
from absl import app, flags
from ml_collections import config_flags

import configs
from data_pipelines import loader
from mvrag_jax.errors import UsageError

MODE_WEIGHTS = {"3d": (1.0, 0.0), "2d": (0.0, 1.0), "mixed": None}


def bench(cfg: mlc.ConfigDict, mode: str, steps: int = 20, warmup: int = 2) -> dict:
    """Time `steps` batches of one mode ("3d", "2d", or "mixed" = the config's weights)."""
    if mode not in MODE_WEIGHTS:
        raise UsageError(f"bench mode {mode!r}; choose one of {sorted(MODE_WEIGHTS)}")
    cfg = mlc.ConfigDict(cfg.to_dict())  # unlocked copy
    if MODE_WEIGHTS[mode] is not None:
        cfg.mix.weight_3d, cfg.mix.weight_2d = MODE_WEIGHTS[mode]
    start = time.perf_counter()
    iterator = iter(loader.make_dataset(cfg, shard=grain.sharding.NoSharding()))
    try:
        for _ in range(warmup):
            next(iterator)
        first = time.perf_counter() - start
        start = time.perf_counter()
        for _ in range(steps):
            next(iterator)
        seconds = time.perf_counter() - start
    finally:
        iterator.close()  # stops worker processes also when a batch fails
    return {"mode": mode, "examples_per_s": round(steps * cfg.batch_size / seconds, 2),
            "batches_per_s": round(steps / seconds, 3), "batch_size": cfg.batch_size, "image_size": cfg.image_size,
            "num_views": cfg.num_views, "num_retrieved": cfg.num_retrieved, "retrieved_size": cfg.retrieved_size,
            "num_workers": cfg.loader.num_workers, "steps": steps, "startup_s": round(first, 2)}


def main(argv) -> int:
    del argv
    for mode in flags.FLAGS.modes:
        print(json.dumps(bench(flags.FLAGS.config, mode, flags.FLAGS.steps, flags.FLAGS.warmup)), flush=True)
    return 0


if __name__ == "__main__":
    config_flags.DEFINE_config_file(
        "config", configs.resolve("data.py:size=tiny"), "Data config (configs/data.py[:arg]).")
    flags.DEFINE_list("modes", ["3d", "2d", "mixed"], "Modes to time: 3d, 2d, mixed.")
    flags.DEFINE_integer("steps", 20, "Timed batches per mode.")
    flags.DEFINE_integer("warmup", 2, "Untimed batches first (worker start-up, buffers).")
    sys.exit(app.run(main))
