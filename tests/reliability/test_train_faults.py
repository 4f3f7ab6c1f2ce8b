"""Faults of a training run (mvrag_jax/train/loop.py), injected into real `mvrag train` runs of the micro config:
a damaged latest checkpoint, a changed config on resume, a second trainer, SIGINT before and during the steps.

One base run (4 steps, checkpoints at 2 and 4) is copied for each fault; every run shares one compile cache."""

import json
import shutil
import signal
import subprocess
import time

import pytest

from mvrag_jax.train import lock, metrics
from tests.reliability.conftest import last_line, mvrag_on_disk, needs_mount
from tests.train.conftest import REPO, subprocess_env, train_argv

pytestmark = pytest.mark.slow


def _train(workdir, data_dir, cache, *overrides, timeout=1800) -> subprocess.CompletedProcess:
    return subprocess.run(train_argv(workdir, data_dir, cache, *overrides), cwd=REPO, env=subprocess_env(),
                          capture_output=True, text=True, timeout=timeout)


def _summary(proc) -> dict:
    assert proc.returncode == 0, proc.stderr[-4000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def base_run(tmp_path_factory, train_data_dir, compile_cache):
    workdir = tmp_path_factory.mktemp("base") / "run"
    summary = _summary(_train(workdir, train_data_dir, compile_cache, "--config.train.steps=4",
                              "--config.train.ckpt_every=2"))
    assert summary["step"] == 4
    saved = sorted(int(p.name) for p in (workdir / "checkpoints").iterdir() if p.name.isdigit())
    assert saved[-2:] == [2, 4], saved  # (orbax also keeps the first step it saw)
    return workdir


def _copy(base, tmp_path):
    shutil.copytree(base, tmp_path / "run")
    return tmp_path / "run"


def _steps_in_file(workdir) -> list[int]:
    return [json.loads(line)["step"] for line in (workdir / metrics.METRICS_FILE).read_text().splitlines()]


@pytest.mark.parametrize("damage", ["data_iter_removed", "arrays_truncated"])
def test_a_damaged_latest_checkpoint_falls_back_to_the_previous_one(base_run, tmp_path, train_data_dir,
                                                                    compile_cache, damage):
    workdir = _copy(base_run, tmp_path)
    step4 = workdir / "checkpoints" / "4"
    if damage == "data_iter_removed":
        shutil.rmtree(step4 / "data_iter")
    else:  # a disk that filled or a copy cut short: every array data file of the state cut to a few bytes
        files = [p for p in (step4 / "state").rglob("*") if p.is_file() and p.stat().st_size > 64
                 and "/d/" in p.as_posix()]
        assert files
        for p in files:
            p.write_bytes(p.read_bytes()[:16])
    proc = _train(workdir, train_data_dir, compile_cache, "--config.train.steps=5", "--config.train.ckpt_every=2")
    summary = _summary(proc)
    assert summary["start_step"] == 2 and summary["skipped_checkpoints"] == [4] and summary["step"] == 5
    assert "checkpoint step 4 in" in proc.stderr and "skipping it for an older one" in proc.stderr
    assert _steps_in_file(workdir) == [1, 2, 3, 4, 5]  # steps 3 and 4 ran again: recorded once


def test_no_checkpoint_that_restores_is_one_line(base_run, tmp_path, train_data_dir, compile_cache):
    workdir = _copy(base_run, tmp_path)
    steps = [p for p in (workdir / "checkpoints").iterdir() if p.name.isdigit()]
    assert len(steps) >= 2  # 2 and 4, and the first step orbax saves whatever the interval
    for step in steps:
        shutil.rmtree(step / "data_iter")
    proc = _train(workdir, train_data_dir, compile_cache, "--config.train.steps=6", "--config.train.ckpt_every=2")
    assert proc.returncode == 2, proc.stderr[-3000:]
    line = last_line(proc.stderr)
    assert line.startswith(f"mvrag train: error: no checkpoint in {workdir}/checkpoints restores (step 4: ")
    assert "move the damaged step folders away" in line


def test_resume_with_a_changed_config(base_run, tmp_path, train_data_dir, compile_cache):
    workdir = _copy(base_run, tmp_path)
    proc = _train(workdir, train_data_dir, compile_cache, "--config.train.steps=5", "--config.train.seed=7")
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert last_line(proc.stderr) == (f"mvrag train: error: resuming {workdir} at step 4 with another config "
                                      "(train.seed: 0 -> 7); resume with the saved values, or pass "
                                      "--allow-config-change to go on with the new ones from this step")
    proc = _train(workdir, train_data_dir, compile_cache, "--config.train.steps=5", "--config.train.seed=7",
                  "--config.model.unet.model_channels=64", "--allow-config-change")
    assert proc.returncode == 2 and "the model or what trains changed (model.unet.model_channels: " in proc.stderr
    summary = _summary(_train(workdir, train_data_dir, compile_cache, "--config.train.steps=5",
                              "--config.train.seed=7", "--allow-config-change"))
    assert summary["start_step"] == 4 and summary["step"] == 5
    # Steps, intervals and the mesh may change without the flag.
    _summary(_train(workdir, train_data_dir, compile_cache, "--config.train.steps=5", "--config.train.seed=7",
                    "--config.train.log_every=3", "--allow-config-change"))


def test_a_second_trainer_on_the_workdir_is_refused(base_run, tmp_path, train_data_dir, compile_cache):
    workdir = _copy(base_run, tmp_path)
    held = {"token": "x", "owner": "pid 77 on vm-2", "host": "vm-2", "pid": 77, "processes": 2,
            "heartbeat": time.time()}
    (workdir / lock.LOCK_FILE).write_text(json.dumps(held))
    proc = _train(workdir, train_data_dir, compile_cache, "--config.train.steps=5")
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert last_line(proc.stderr).startswith(f"mvrag train: error: {workdir} is in use by another trainer (pid 77 on "
                                             "vm-2, 2 process(es), last heartbeat ")
    assert max(int(p.name) for p in (workdir / "checkpoints").iterdir() if p.name.isdigit()) == 4  # untouched
    # A heartbeat older than train.lock_stale_after_s is a dead trainer's: taken over.
    (workdir / lock.LOCK_FILE).write_text(json.dumps({**held, "heartbeat": time.time() - 120}))
    proc = _train(workdir, train_data_dir, compile_cache, "--config.train.steps=4",
                  "--config.train.lock_stale_after_s=60")
    assert _summary(proc)["step"] == 4 and "taking over the stale lock" in proc.stderr
    assert not (workdir / lock.LOCK_FILE).exists()  # released at exit


def _start(workdir, data_dir, cache, *overrides):
    return subprocess.Popen(train_argv(workdir, data_dir, cache, *overrides), cwd=REPO, env=subprocess_env(),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _wait_for(proc, ready, timeout_s: float = 1800) -> None:
    deadline = time.time() + timeout_s
    while not ready():
        assert proc.poll() is None and time.time() < deadline, proc.stderr.read()[-3000:] if proc.poll() else ""
        time.sleep(0.05)


def test_sigint_before_any_step_exits_130_without_a_traceback(tmp_path, train_data_dir, compile_cache):
    workdir = tmp_path / "run"
    proc = _start(workdir, train_data_dir, compile_cache, "--config.train.steps=4")
    _wait_for(proc, (workdir / lock.LOCK_FILE).exists)  # the lock is taken before the data build and the compile
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=600)
    assert proc.returncode == 130, err[-3000:]
    summary = json.loads(out.strip().splitlines()[-1])
    assert summary["preempted"] and summary["signal"] == "SIGINT" and summary["step"] == 0
    assert "Traceback" not in err and "no step ran since the last save" in err
    assert not [p for p in (workdir / "checkpoints").iterdir() if p.name.isdigit()]
    assert not (workdir / lock.LOCK_FILE).exists()


def test_sigint_mid_run_saves_and_the_resume_records_each_step_once(tmp_path, train_data_dir, compile_cache):
    workdir, steps = tmp_path / "run", 8
    proc = _start(workdir, train_data_dir, compile_cache, f"--config.train.steps={steps}",
                  "--config.train.ckpt_every=100")
    _wait_for(proc, lambda: (workdir / metrics.METRICS_FILE).exists() and len(_steps_in_file(workdir)) >= 2)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=600)
    assert proc.returncode == 130, err[-3000:]
    stopped = json.loads(out.strip().splitlines()[-1])
    assert stopped["preempted"] and stopped["signal"] == "SIGINT" and 2 <= stopped["step"] < steps, stopped
    saved = sorted(int(p.name) for p in (workdir / "checkpoints").iterdir() if p.name.isdigit())
    assert saved[-1] == stopped["step"]  # off the save interval: saved because a step ran since the last save
    resumed = _summary(_train(workdir, train_data_dir, compile_cache, f"--config.train.steps={steps}",
                              "--config.train.ckpt_every=100"))
    assert resumed["start_step"] == stopped["step"] and resumed["step"] == steps
    assert _steps_in_file(workdir) == list(range(1, steps + 1))


@needs_mount
def test_disk_full_during_an_async_save_keeps_the_previous_checkpoint(tmp_path, train_data_dir, compile_cache):
    # An 8 MB disk holds one micro checkpoint (~5.5 MB) but not two: orbax saves step 1 (its first save is never
    # skipped), so the save of step 2 fails mid-write and step 1 must survive it whole.
    disk, copy = tmp_path / "disk", tmp_path / "copy"
    argv = train_argv(disk / "run", train_data_dir, compile_cache, "--config.train.steps=4",
                      "--config.train.ckpt_every=2", "--config.train.keep_checkpoints=3")
    proc, files = mvrag_on_disk(tmp_path, "8m", argv[3:], timeout=1800, after=f"cp -a {disk}/run {copy}")
    assert proc.returncode == 2, proc.stderr[-3000:]
    line = last_line(proc.stderr)
    assert line.startswith("mvrag train: error: [ENOSPC] No space left on device: ") and str(disk) in line, line
    assert "./run/checkpoints/1" in files and f"./run/{lock.LOCK_FILE}" not in files  # released on the error
    from mvrag_jax.train import checkpoint
    manager = checkpoint.open_manager(copy, read_only=True)
    assert manager.all_steps() == [1]  # the partial step 2 is not listed
    step, state = checkpoint.restore_state(copy)
    assert step == 1 and int(state["step"]) == 1  # and step 1 restores whole
