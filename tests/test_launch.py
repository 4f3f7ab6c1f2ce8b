"""launch/tpu_train.sh, offline: --dry_run prints the gcloud calls; a plan that does not fit stops it first."""

import json
import pathlib
import re
import shutil
import subprocess

import pytest

REPO = pathlib.Path(__file__).resolve().parents[1]
SCRIPT = REPO / "launch" / "tpu_train.sh"
GIB = 1024 ** 3
BASE = ["--tpu", "mvrag-t1", "--zone", "us-west4-a", "--project", "proj-1", "--accelerator_type", "v5litepod-8",
        "--workdir", "gs://bucket/runs/r1", "--data", "gs://bucket/data/mv"]


def _plan_json(tmp_path, total_gib: float, fits: bool) -> str:
    report = {"topology": "v5e:2x4", "batch": 24, "hbm_per_chip_bytes": 16 * GIB,
              "programs": {"train": {"fits": fits, "memory": {"total_bytes": int(total_gib * GIB)}}}}
    path = tmp_path / "plan.json"
    path.write_text("some compile log line\n" + json.dumps(report) + "\n")
    return str(path)


def _launch(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", str(SCRIPT), *args], capture_output=True, text=True, timeout=60, cwd="/")


def test_dry_run_prints_the_whole_launch(tmp_path):
    proc = _launch("--dry_run", *BASE, "--plan_json", _plan_json(tmp_path, 2.5, True), "--",
                   "--config.train.batch_size=24")
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    assert "2.50 GiB per chip of 16 GiB HBM: fits" in out
    lines = [line for line in out.splitlines() if "gcloud" in line]
    assert "gcloud compute tpus tpu-vm describe mvrag-t1 --zone us-west4-a --project proj-1" in lines[0]
    assert ("gcloud compute tpus tpu-vm create mvrag-t1 --zone us-west4-a --project proj-1 --accelerator-type "
            "v5litepod-8 --version v2-alpha-tpuv5-lite") in lines[1]
    scp = next(line for line in lines if " scp " in line)
    assert "--worker=all" in scp and "mvrag_code" in scp
    ssh = [line for line in lines if "tpu-vm ssh mvrag-t1" in line]
    assert all("--worker=all" in line for line in ssh[:-1]) and "--worker=0" in ssh[-1] and "tail -F" in ssh[-1]
    install = next(line for line in ssh if "pip install" in line)
    assert "-r requirements.txt -r requirements-tpu.txt" in install
    mount = next(line for line in ssh if "gcsfuse" in line)
    assert "/mnt/gcs/bucket" in mount and "--implicit-dirs" in mount
    train = next(line for line in ssh if "mvrag train" in line)
    for piece in ("--config configs/train.py:size=full", "--workdir gs://bucket/runs/r1", "--multihost",
                  "--config.data.data_dir=/mnt/gcs/bucket/data/mv", "--config.train.batch_size=24", "nohup",
                  "--compile_cache_dir gs://bucket/runs/r1/xla_cache"):  # restarts reuse the compiled step
        assert piece in train


def test_dry_run_without_a_saved_plan_prints_the_plan_command_and_copy_mode():
    proc = _launch("--dry_run", *BASE, "--data_mode", "copy", "--mesh", "data=1,fsdp=8", "--",
                   "--config.train.batch_size=24")
    assert proc.returncode == 0, proc.stderr
    plan = next(line for line in proc.stdout.splitlines() if "mvrag_jax plan" in line)
    for piece in ("--topology v5litepod-8", "--programs train", "--json", "--mesh data=1,fsdp=8",
                  "--config.train.batch_size=24"):
        assert piece in plan
    assert "gcloud storage cp -r gs://bucket/data/mv/* /tmp/mvrag_data/" in proc.stdout
    assert "--config.data.data_dir=/tmp/mvrag_data" in proc.stdout
    assert "gcsfuse" not in proc.stdout


def test_a_config_that_does_not_fit_is_refused_before_any_cloud_call(tmp_path):
    proc = _launch("--dry_run", *BASE, "--plan_json", _plan_json(tmp_path, 21.3, False))
    assert proc.returncode == 3
    assert "does not fit" in proc.stderr and "21.30 GiB per chip of 16 GiB HBM" in proc.stderr
    assert "--find_max_batch" in proc.stderr
    assert "gcloud" not in proc.stdout


@pytest.mark.parametrize("args, fragment", [
    (["--zone", "z"], "--tpu is required"),
    ([*BASE[:-2], "--data", "/local/data"], "--data must be the gs://"),
    ([*BASE[:-4], "--workdir", "/local/run", *BASE[-2:]], "--workdir must be a gs:// folder"),
    ([*BASE, "--data_mode", "nfs"], "gcsfuse or copy"),
    ([*BASE, "--accelerator_type", "v9-8"], "no default --runtime_version"),
])
def test_bad_flags_are_one_line_errors(args, fragment):
    proc = _launch("--dry_run", *args)
    assert proc.returncode == 2 and fragment in proc.stderr


@pytest.mark.skipif(shutil.which("shellcheck") is None, reason="shellcheck is not installed (apt install shellcheck)")
def test_shellcheck_clean():
    proc = subprocess.run(["shellcheck", str(SCRIPT)], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stdout


def test_dashed_flags_are_taken_like_every_other_command():
    dashed = [a.replace("_", "-") if a.startswith("--") else a for a in BASE]  # --accelerator-type, ...
    proc = _launch("--dry-run", *dashed, "--skip-plan", "--", "--config.train.batch_size=24")
    assert proc.returncode == 0, proc.stderr
    underscored = _launch("--dry_run", *BASE, "--skip_plan", "--", "--config.train.batch_size=24")
    same_pid = lambda out: re.sub(r"mvrag_code_\d+", "mvrag_code_PID", out)  # the code archive is named by pid
    assert same_pid(proc.stdout) == same_pid(underscored.stdout)
    assert "v5litepod-8" in proc.stdout and "--config.train.batch_size=24" in proc.stdout


def test_supervise_dry_run_prints_every_command_of_a_preempt_and_resume_cycle():
    proc = _launch("--dry_run", *BASE, "--skip_plan", "--spot", "--supervise", "--poll_s", "60")
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    launch, cycle = out.split("# ---- supervise: every 60 s, one preempt-and-resume cycle\n")
    assert "--spot" in next(line for line in launch.splitlines() if "tpu-vm create" in line)
    steps = [("tpu-vm describe mvrag-t1", "value(state)"), ("tpu-vm delete mvrag-t1", "--quiet"),
             ("tpu-vm create mvrag-t1", "--spot"), ("tar -czf", "mvrag_code"), ("tpu-vm scp", "--worker=all"),
             ("tar -xzf", "--worker=all"), ("pip install", "requirements-tpu.txt"), ("gcsfuse", "/mnt/gcs/bucket"), ("setsid nohup", "mvrag train"),
             ("mvrag-status", "--worker=all"), ("kill -TERM", "--worker=all"), ("setsid nohup", "mvrag train")]
    lines = [line for line in cycle.splitlines() if line.startswith("+ ")]
    assert len(lines) == len(steps), cycle
    for line, (first, second) in zip(lines, steps):
        assert first in line and second in line, (line, first, second)
    train = lines[-1]
    for piece in ("--workdir gs://bucket/runs/r1", "--multihost", "--compile_cache_dir gs://bucket/runs/r1/xla_cache",
                  "~/mvrag_train.rc"):  # resumes from the bucket; its exit status is what the supervisor reads
        assert piece in train
    assert "tail -F" not in cycle


def _supervise(tmp_path, state: dict, *args: str) -> tuple[subprocess.CompletedProcess, dict]:
    """Run the launcher for real against tests/fake_gcloud.py on PATH (no cloud, no sleeps: --poll_s 0)."""
    import os
    import sys
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "gcloud").write_text(f"#!/bin/sh\nexec {sys.executable} {REPO / 'tests' / 'fake_gcloud.py'} \"$@\"\n")
    (bin_dir / "gcloud").chmod(0o755)
    state_file = tmp_path / "state.json"
    state_file.write_text(json.dumps({"polls": 0, "calls": [], **state}))
    env = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}", "FAKE_GCLOUD_STATE": str(state_file),
           "TMPDIR": str(tmp_path)}
    proc = subprocess.run(["bash", str(SCRIPT), *BASE, "--skip_plan", "--poll_s", "0", *args], capture_output=True,
                          text=True, timeout=300, cwd="/", env=env)  # ~20 gcloud calls: slow on a busy machine
    return proc, json.loads(state_file.read_text())


def _kinds(calls: list[list[str]]) -> list[str]:
    """Each gcloud call as a word: describe, create, delete, scp, setup (ssh), start, stop, status, log."""
    kinds = []
    for argv in calls:
        verb = argv[3]
        if verb == "ssh":
            command = argv[argv.index("--command") + 1]
            verb = next((kind for key, kind in (("setsid", "start"), ("kill -TERM", "stop"),
                                                ("mvrag-status", "status"), ("tail -F", "log")) if key in command),
                        "setup")
        kinds.append(verb)
    return kinds


def test_supervise_recreates_a_preempted_vm_restarts_a_lost_trainer_and_stops_when_done(tmp_path):
    proc, state = _supervise(tmp_path, {"vm": None, "trainers": ["none", "none"],
                                        "events": {"3": "preempt_vm", "5": "worker1_gone", "6": "finish"}},
                             "--supervise")
    assert proc.returncode == 0, proc.stderr
    kinds = [k for k in _kinds(state["calls"]) if k not in ("scp", "setup")]
    assert kinds == [
        "describe", "delete", "create", "describe", "start",   # no VM: create it, set it up, train
        "describe", "delete", "create", "describe", "start",   # poll 3: preempted: delete, create, set up, train
        "describe", "status", "stop", "start",                 # poll 5: worker 1's trainer gone: stop all, start all
        "describe", "status"]                                  # poll 6: every trainer done
    assert _kinds(state["calls"]).count("scp") == 2  # the code is copied to each new VM
    assert "preempted or is gone; creating it again" in proc.stdout
    assert "restarting on every worker (it resumes from gs://bucket/runs/r1)" in proc.stdout
    assert "every worker's trainer finished" in proc.stdout
    assert state["trainers"] == ["done", "done"]


def test_supervise_gives_up_after_failed_starts_in_a_row(tmp_path):
    proc, state = _supervise(tmp_path, {"vm": "READY", "trainers": ["none", "none"],
                                        "events": {"2": "fail", "3": "fail"}}, "--supervise", "--max-failures", "2")
    assert proc.returncode == 2
    assert "the trainer failed 2 times in a row; see ~/mvrag_train.log on the workers" in proc.stderr
    assert _kinds(state["calls"]).count("start") == 2  # the launch, then one restart after the first failure


def test_a_second_launch_onto_a_running_trainer_is_refused(tmp_path):
    proc, state = _supervise(tmp_path, {"vm": "READY", "trainers": ["running", "running"], "events": {}})
    assert proc.returncode == 2
    assert "a trainer already runs on mvrag-t1; watch it with --supervise, or stop it first" in proc.stderr
    assert "start" not in _kinds(state["calls"]) and "setup" not in _kinds(state["calls"])


def test_dry_run_over_two_slices_queues_one_resource_and_starts_every_node(tmp_path):
    proc = _launch("--dry_run", *BASE, "--num_slices", "2", "--plan_json", _plan_json(tmp_path, 2.5, True), "--",
                   "--config.train.batch_size=32")
    assert proc.returncode == 0, proc.stderr
    lines = [line for line in proc.stdout.splitlines() if "gcloud" in line]
    assert "gcloud compute tpus queued-resources describe mvrag-t1" in lines[0]
    assert ("gcloud compute tpus queued-resources create mvrag-t1 --zone us-west4-a --project proj-1 --node-count 2 "
            "--node-prefix mvrag-t1 --accelerator-type v5litepod-8 --runtime-version v2-alpha-tpuv5-lite") in lines[1]
    assert "--spot" not in lines[1] and "tpu-vm create" not in proc.stdout
    for node in ("mvrag-t1-0", "mvrag-t1-1"):  # code, install, data and train reach every worker of both slices
        assert any(" scp " in line and f"{node}:" in line for line in lines)
        assert any(f"tpu-vm ssh {node} " in line and "pip install" in line for line in lines)
        train = [line for line in lines if f"tpu-vm ssh {node} " in line and "mvrag train" in line]
        assert len(train) == 1 and "--num_slices 2" in train[0] and "--multihost" in train[0], train
    assert "tpu-vm ssh mvrag-t1 " not in proc.stdout  # the queued resource's name is not a VM
    assert "tpu-vm ssh mvrag-t1-0" in lines[-1] and "--worker=0" in lines[-1] and "tail -F" in lines[-1]
    spot = _launch("--dry_run", *BASE, "--num_slices", "2", "--spot", "--skip_plan")
    assert spot.returncode == 0 and "--node-count 2" in spot.stdout and "--spot" in spot.stdout
    plan = _launch("--dry_run", *BASE, "--num_slices", "2")  # the plan compiles for both slices
    assert "--num_slices 2" in next(line for line in plan.stdout.splitlines() if "mvrag_jax plan" in line)
    bad = _launch("--dry_run", *BASE, "--num_slices", "0")
    assert bad.returncode == 2 and "--num_slices must be a positive integer, got '0'" in bad.stderr


def test_supervise_over_two_slices_asks_and_restarts_every_node(tmp_path):
    proc, state = _supervise(tmp_path, {"vm": "READY", "trainers": ["none", "none"],
                                        "events": {"2": "worker1_gone", "3": "finish"}},
                             "--supervise", "--num_slices", "2")
    assert proc.returncode == 0, proc.stderr
    nodes = lambda kind: [argv[4] for argv, k in zip(state["calls"], _kinds(state["calls"])) if k == kind]
    assert state["calls"][0][1:4] == ["tpus", "queued-resources", "describe"]
    assert nodes("start") == ["mvrag-t1-0", "mvrag-t1-1"] * 2  # the launch, then the restart after worker 1
    assert nodes("stop") == ["mvrag-t1-0", "mvrag-t1-1"]
    assert nodes("status") == ["mvrag-t1-0", "mvrag-t1-1"] * 3  # before the launch (none running), polls 2 and 3
    assert "every worker's trainer finished" in proc.stdout
