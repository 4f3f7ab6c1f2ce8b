"""mvrag_jax/train/loop.py (+ metrics.py): config errors name the fix, records/TensorBoard/PNG, and a run stopped by
SIGTERM at a random step resumes to losses, weights and EMA bitwise equal to an unbroken run's."""

import json
import random
import signal
import subprocess
import time

import jax
import numpy as np
import pytest
from PIL import Image

from configs import train
from mvrag_jax.train import checkpoint, loop, metrics
from tests.train.conftest import REPO, run_python, run_train, subprocess_env, train_argv


def _tiny():
    cfg = train.get_config("size=tiny")
    cfg.train.batch_size = cfg.data.batch_size = 2
    return cfg


def test_config_errors_name_the_field_and_fix(tmp_path):
    cfg = _tiny()
    with cfg.unlocked():
        cfg.mesh.pipeline = 2
    with pytest.raises(loop.TrainConfigError, match=r"unknown mesh axis 'pipeline'.*data, fsdp, tensor"):
        loop.check_config(cfg, num_processes=1)
    cfg = _tiny()
    cfg.train.batch_size = cfg.data.batch_size = 3
    with pytest.raises(loop.TrainConfigError, match=r"batch 3 does not split over 2 processes; set "
                                                     r"--config.train.batch_size to a multiple of 2"):
        loop.check_config(cfg, num_processes=2)
    cfg = _tiny()
    cfg.train.init = str(tmp_path / "missing_ckpt")
    with pytest.raises(loop.TrainConfigError, match=r"init checkpoint '.*missing_ckpt' not found; set "
                                                     r"--config.train.init to a converted checkpoint folder"):
        loop.run(cfg, tmp_path / "run")
    assert not (tmp_path / "run").exists()  # failed before touching the workdir


_MESH_ERRORS = """
import sys
from configs import train
from mvrag_jax.train import loop
for overrides in ({"mesh": {"data": 1, "fsdp": 16, "tensor": 1}}, {"mesh": {"data": 2, "fsdp": 4, "tensor": 1}}):
    cfg = train.get_config("size=tiny")
    cfg.update_from_flattened_dict({"mesh." + k: v for k, v in overrides["mesh"].items()})
    cfg.train.batch_size = cfg.data.batch_size = 12
    try:
        loop.run(cfg, sys.argv[1])
    except ValueError as e:
        print(type(e).__name__, e)
"""


def test_mesh_and_batch_errors_on_8_devices(tmp_path):
    proc = run_python(_MESH_ERRORS, tmp_path / "run", XLA_FLAGS="--xla_force_host_platform_device_count=8")
    assert proc.returncode == 0, proc.stderr[-3000:]
    too_big, indivisible = proc.stdout.strip().splitlines()
    assert "needs 16 devices, 8 are available; change the mesh sizes" in too_big
    assert ("train.batch_size 12 is not divisible by data*fsdp=8; set --config.train.batch_size to a multiple of 8"
            in indivisible)


def test_cli_reports_a_missing_init_checkpoint(tmp_path, compile_cache):
    proc = subprocess.run(train_argv(tmp_path / "run", tmp_path / "data", compile_cache,
                                     f"--config.train.init={tmp_path}/nope"),
                          cwd=REPO, env=subprocess_env(), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines()[-1].startswith("mvrag train: error: init checkpoint")


def test_metric_records_tensorboard_and_loss_png(tmp_path):
    with metrics.MetricWriter(tmp_path) as writer:
        writer.write([{"step": 1, "loss": 0.5, "loss_3d": 0.5}, {"step": 2, "loss": 0.4, "loss_2d": 0.4}])
        writer.write([{"step": 2, "loss": 0.3, "loss_2d": 0.3}, {"step": 3, "loss": 0.2, "loss_3d": 0.2}])  # resumed
    assert [(r["step"], r["loss"]) for r in metrics.read_metrics(tmp_path)] == [(1, 0.5), (2, 0.3), (3, 0.2)]
    events = list((tmp_path / metrics.TB_DIR).glob("events.out.tfevents.*"))
    assert len(events) == 1 and b"train/loss_3d" in events[0].read_bytes()
    png = metrics.plot_loss(tmp_path)
    with Image.open(png) as image:
        assert image.format == "PNG" and image.size == (700, 400)
        assert len(np.unique(np.asarray(image.convert("L")))) > 10  # something was drawn
    assert metrics.plot_loss(tmp_path / "no_records") is None


def _losses(workdir) -> dict[int, float]:
    return {r["step"]: r["loss"] for r in metrics.read_metrics(workdir)}


@pytest.mark.slow
def test_sigterm_at_a_random_step_then_resume_is_bitwise_identical(tmp_path, train_data_dir, compile_cache):
    # The signal lands within a step or two of the metrics record it waits for (steps take ~1 s with a warm compile
    # cache): 8 steps leave room after the latest stop, 3, so the run is always cut short. With an EMA of the
    # trained weights (train/ema.py), which must come out bit for bit too.
    steps, ema = 8, "--config.train.ema_decay=0.9"
    whole = run_train(tmp_path / "whole", train_data_dir, compile_cache, f"--config.train.steps={steps}",
                      "--config.train.ckpt_every=2", ema)
    assert whole["step"] == steps and not whole["preempted"]
    assert list((tmp_path / "whole" / metrics.TB_DIR).glob("events.out.tfevents.*"))
    assert (tmp_path / "whole" / metrics.LOSS_PNG).stat().st_size > 1000

    stop_after = random.Random().randint(1, steps - 5)
    broken = tmp_path / "broken"
    proc = subprocess.Popen(train_argv(broken, train_data_dir, compile_cache, f"--config.train.steps={steps}",
                                       "--config.train.ckpt_every=2", ema),
                            cwd=REPO, env=subprocess_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 900
    while len(_losses(broken)) < stop_after:
        assert proc.poll() is None and time.time() < deadline, proc.stderr.read()[-3000:] if proc.poll() else ""
        time.sleep(0.1)
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err[-3000:]
    stopped = json.loads(out.strip().splitlines()[-1])
    assert stopped["preempted"] and stop_after <= stopped["step"] < steps, (stop_after, stopped)

    resumed = run_train(broken, train_data_dir, compile_cache, f"--config.train.steps={steps}",
                        "--config.train.ckpt_every=2", ema)
    assert resumed["start_step"] == stopped["step"] and resumed["step"] == steps
    assert _losses(broken) == _losses(tmp_path / "whole"), f"stopped after step {stopped['step']}"
    (step_a, straight), (step_b, cut) = checkpoint.restore_state(tmp_path / "whole"), checkpoint.restore_state(broken)
    assert step_a == step_b == steps
    for part in ("ema", "trainable"):
        leaves = jax.tree.leaves(straight[part])
        assert leaves and len(leaves) == len(jax.tree.leaves(cut[part])), part
        for a, b in zip(leaves, jax.tree.leaves(cut[part])):
            np.testing.assert_array_equal(np.asarray(b), np.asarray(a), err_msg=part)
    assert any(not np.array_equal(np.asarray(a), np.asarray(b))  # the EMA is not just the weights
               for a, b in zip(jax.tree.leaves(straight["ema"]), jax.tree.leaves(straight["trainable"])))


def test_sample_hook_output_becomes_pngs_and_tensorboard_images(tmp_path):
    grid = np.zeros((8, 16, 3), np.uint8)
    grid[:, 8:] = 255
    with metrics.MetricWriter(tmp_path) as writer:
        loop.write_samples({"grid": grid}, tmp_path, 12, writer)
        with pytest.raises(ValueError, match=r"return \[H, W, 3\] uint8"):
            loop.write_samples({"bad": grid.astype(np.float32)}, tmp_path, 12, writer)
    with Image.open(tmp_path / loop.SAMPLES_SUBDIR / "grid_00000012.png") as image:
        np.testing.assert_array_equal(np.asarray(image), grid)
    assert b"samples/grid" in next((tmp_path / metrics.TB_DIR).glob("events.*")).read_bytes()
