"""mvrag_jax/bench/train.py: train-step figures per mesh (the micro config, one device, in this process), the GPU
max-batch search against a fake step, mesh parsing, and `mvrag bench train` errors; fake-device meshes through the
CLI in a subprocess (slow)."""

import json
import math
import os
import pathlib
import subprocess
import sys

import jax
import pytest

from configs import tiny, train
from mvrag_jax.bench import suite as bench_suite, train as bench_train
from mvrag_jax.cli import main

REPO = pathlib.Path(__file__).resolve().parents[2]
NO_CACHE = ["--compile_cache_dir", "none"]


def _micro():
    cfg = train.get_config("size=micro")
    cfg.train.trainable = "ip"  # the paper's trainable set: a smaller backward pass, so a faster compile
    return cfg


def test_bench_train_micro_record():
    record = bench_train.bench_train(_micro(), ["data=1"], batch=2, steps=2)
    assert record["component"] == "train" and record["backend"] == "cpu" and record["steps"] == 2
    assert (record["dtype"], record["remat"], record["attention"], record["num_views"]) == \
        ("float32", "none", "chunked", 4)
    assert list(record["meshes"]) == ["data=1,fsdp=1,tensor=1"]
    run = record["meshes"]["data=1,fsdp=1,tensor=1"]
    assert run["devices"] == 1 and run["batch_size"] == 2
    assert run["compile_s"] > 0 and run["init_s"] > 0
    assert 0 < run["step_min_s"] <= run["step_s"] <= run["step_max_s"]
    assert run["objects_per_s"] == pytest.approx(2 / run["step_s"])
    assert run["views_per_s"] == pytest.approx(4 * run["objects_per_s"])
    assert run["compiles_during_steps"] == 0  # the timed steps reuse the one AOT compile
    assert math.isfinite(run["final_loss"]) and run["final_loss"] > 0
    assert run["memory"]["train"]["temp_size_in_bytes"] > 0
    json.dumps(record)  # the record is JSON as it is


def test_count_compiles_sees_a_compile():
    f, x, y = jax.jit(lambda x: x * 3 + 1), jax.numpy.arange(7.0), jax.numpy.arange(3.0)
    with bench_train.count_compiles() as counts:
        f(x).block_until_ready()
        f(x).block_until_ready()
    assert counts["compiles"] == 1
    with bench_train.count_compiles() as again:
        f(x).block_until_ready()
        f(y).block_until_ready()  # a new shape: one more compile
    assert again["compiles"] == 1


def test_search_max_batch_doubles_then_bisects():
    """A fake step that runs out of memory above 88 objects, on 8 shards: 8..64 fit, 128 does not, bisection to 88."""
    seen = []

    def try_batch(batch):
        seen.append(batch)
        if batch > 88:
            raise RuntimeError(f"RESOURCE_EXHAUSTED: Out of memory while trying to allocate {batch} GiB")
        return {"batch_size": batch, "step_s": batch / 100}

    result = bench_train.search_max_batch(try_batch, shards=8, max_batch=4096)
    assert result["max_batch"] == 88 and result["figures"] == {"batch_size": 88, "step_s": 0.88}
    assert seen == [8, 16, 32, 64, 128, 96, 80, 88] and not result["limit_reached"]
    assert [p["fits"] for p in result["probes"]] == [b <= 88 for b in seen]
    capped = bench_train.search_max_batch(try_batch, shards=8, max_batch=40)
    assert capped["max_batch"] == 40 and capped["limit_reached"]
    nothing = bench_train.search_max_batch(try_batch, shards=100, max_batch=400)
    assert nothing["max_batch"] == 0 and nothing["figures"] is None


def test_search_max_batch_lets_other_errors_through():
    def broken(batch):
        raise RuntimeError("INTERNAL: a real failure")

    with pytest.raises(RuntimeError, match="a real failure"):
        bench_train.search_max_batch(broken, shards=1, max_batch=8)
    with pytest.raises(bench_train.BenchTrainError, match="raise --max_batch"):
        bench_train.search_max_batch(broken, shards=8, max_batch=4)


def test_parse_meshes_and_devices_needed():
    meshes = bench_train.parse_meshes(["data=1", "data=8;data=2,fsdp=4 tensor=2,data=-1"])
    assert meshes == [{"data": 1, "fsdp": 1, "tensor": 1}, {"data": 8, "fsdp": 1, "tensor": 1},
                      {"data": 2, "fsdp": 4, "tensor": 1}, {"data": -1, "fsdp": 1, "tensor": 2}]
    assert bench_train.devices_needed(meshes) == 8
    with pytest.raises(ValueError, match="data=1,fsdp=8"):
        bench_train.parse_meshes(["model=2"])
    with pytest.raises(bench_train.BenchTrainError, match="no mesh given"):
        bench_train.parse_meshes([" "])


def test_bench_train_errors_name_the_fix():
    with pytest.raises(bench_train.BenchTrainError, match="needs 64 devices.*device_count=64"):
        bench_train.bench_train(_micro(), ["data=64"], steps=1)
    with pytest.raises(bench_train.BenchTrainError, match="batch 0 is not a positive multiple.*--batch"):
        bench_train.bench_mesh(_micro(), {"data": 1, "fsdp": 1, "tensor": 1}, batch=0)
    with pytest.raises(bench_train.BenchTrainError, match="steps >= 1"):
        bench_train.bench_train(_micro(), ["data=1"], steps=0)
    assert "train" in bench_suite.benchmarks(tiny.get_config(), 1)


def test_cli_bench_train_errors(capsys):
    assert main(["mvrag", "bench", "train", "--config", "configs/tiny.py", "--meshes", "data=1"] + NO_CACHE) == 2
    assert "needs a train config" in capsys.readouterr().err
    assert main(["mvrag", "bench", "train", "--config", "configs/train.py:size=micro", "--meshes", "data=1",
                 "--find_max_batch"] + NO_CACHE) == 2
    assert "needs a GPU or TPU" in capsys.readouterr().err


@pytest.mark.slow
def test_cli_bench_train_on_two_fake_device_meshes():
    """`mvrag bench train` makes the fake CPU devices its largest mesh needs (a fresh process: JAX not started);
    with train.encoders=separate, the step is two programs."""
    env = {**os.environ, "PYTHONPATH": str(REPO), "JAX_PLATFORMS": "cpu", "TRANSFORMERS_VERBOSITY": "error"}
    env.pop("XLA_FLAGS", None)
    argv = [sys.executable, "-m", "mvrag_jax", "bench", "train", "--config", "configs/train.py:size=micro",
            "--config.train.trainable=ip", "--config.train.encoders=separate", "--meshes", "data=1 data=2",
            "--batch", "2", "--steps", "2", *NO_CACHE]
    proc = subprocess.run(argv, cwd=REPO, env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    record = json.loads(proc.stdout)
    assert record["local_devices"] == 2 and list(record["meshes"]) == ["data=1,fsdp=1,tensor=1",
                                                                       "data=2,fsdp=1,tensor=1"]
    for run in record["meshes"].values():
        assert run["compiles_during_steps"] == 0 and run["step_s"] > 0 and not run["compile_cache_hit"]
        assert set(run["memory"]) == {"encode", "train"} and record["encoders"] == "separate"
