"""launch/tpu_train.sh, offline: --dry_run prints the gcloud calls; a plan that does not fit stops it first."""

import json
import pathlib
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


def test_dry_run_over_two_slices_queues_one_resource_and_starts_every_node(tmp_path):
    proc = _launch("--dry_run", *BASE, "--num_slices", "2", "--plan_json", _plan_json(tmp_path, 2.5, True), "--",
                   "--config.train.batch_size=32")
    assert proc.returncode == 0, proc.stderr
    lines = [line for line in proc.stdout.splitlines() if "gcloud" in line]
    assert "gcloud compute tpus queued-resources describe mvrag-t1" in lines[0]
    assert ("gcloud compute tpus queued-resources create mvrag-t1 --zone us-west4-a --project proj-1 "
            "--accelerator-type v5litepod-8 --runtime-version v2-alpha-tpuv5-lite --node-count 2 "
            "--node-prefix mvrag-t1") in lines[1]
    assert "tpu-vm create" not in proc.stdout
    for node in ("mvrag-t1-0", "mvrag-t1-1"):  # code, install, data and train reach every worker of both slices
        assert any(" scp " in line and f"{node}:" in line for line in lines)
        train = [line for line in lines if f"tpu-vm ssh {node} " in line and "mvrag train" in line]
        assert len(train) == 1 and "--num_slices 2" in train[0] and "--multihost" in train[0], train
    assert "tpu-vm ssh mvrag-t1-0" in lines[-1] and "--worker=0" in lines[-1] and "tail -F" in lines[-1]


def test_dry_run_plan_command_compiles_for_the_slices():
    proc = _launch("--dry_run", *BASE, "--num_slices", "4")
    assert proc.returncode == 0, proc.stderr
    plan = next(line for line in proc.stdout.splitlines() if "mvrag_jax plan" in line)
    assert "--topology v5litepod-8" in plan and "--num_slices 4" in plan
    assert _launch(*BASE, "--num_slices", "0").returncode == 2
