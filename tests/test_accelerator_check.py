"""tools/accelerator_check.sh, offline: the one `mvrag bench all` command it runs (full size and --smoke), its flag
checks, and the attention benchmark it relies on (mvrag_jax/bench/attention.py) on this CPU."""

import pathlib
import subprocess

import pytest

REPO = pathlib.Path(__file__).resolve().parents[1]
SCRIPT = REPO / "tools" / "accelerator_check.sh"


def _check(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", str(SCRIPT), *args], capture_output=True, text=True, timeout=60, cwd="/")


def test_full_size_dry_run_is_one_bench_all_of_the_goal_settings():
    proc = _check("--dry_run", "--out", "/tmp/acc.json")
    assert proc.returncode == 0, proc.stderr
    (line,) = [line for line in proc.stdout.splitlines() if line.startswith("+ ")]
    for piece in ("timeout --signal=TERM --kill-after=20 570 ", "-m mvrag_jax bench all",
                  "--config configs/train.py:size=full", "--config.runtime.dtype=bfloat16", "--out /tmp/acc.json",
                  "--objects 1,4,8,16", "--sample_steps 50 --prior_steps 10", "--find_max_batch",
                  "--compile_cache_dir none", " sample train attention unet"):
        assert piece in line, (piece, line)


def test_smoke_dry_run_takes_the_tiny_config_without_max_batch_search():
    proc = _check("--smoke", "--dry_run")
    assert proc.returncode == 0, proc.stderr
    line = proc.stdout.strip().splitlines()[-1]
    assert "--config configs/train.py:size=tiny" in line and "--objects 1,2" in line and "--steps 1" in line
    assert "--find_max_batch" not in line and "size=full" not in line


@pytest.mark.parametrize("args, fragment", [
    (["--objects", "1,x"], "--objects must be counts"),
    (["--steps", "0"], "--steps must be a positive integer"),
    (["--timeout_s", "soon"], "--timeout_s must be a positive number"),
    (["--nope"], "unknown flag --nope"),
])
def test_bad_flags_exit_2_with_the_reason(args, fragment):
    proc = _check("--dry_run", *args)
    assert proc.returncode == 2 and fragment in proc.stderr, proc.stderr


def test_attention_benchmark_checks_every_kernel_this_backend_runs_against_xla():
    from configs import train
    from mvrag_jax.bench import attention
    figures = attention.bench_attention(train.get_config("size=micro"), calls=1)
    assert figures["backend"] == "cpu" and set(figures["skipped"]) == {"cudnn", "pallas_tpu"}
    assert {(c["kernel"], c["case"], c["dtype"]) for c in figures["cases"]} == {
        ("chunked", case, dtype) for case in ("self_attention", "cross_attention") for dtype in ("float32", "bfloat16")}
    assert figures["ok"] and all(c["max_abs_err"] <= 1e-4 for c in figures["cases"] if c["dtype"] == "float32")


def test_a_kernel_out_of_tolerance_fails_the_suite(tmp_path, monkeypatch):
    from configs import train
    from mvrag_jax.bench import suite
    from mvrag_jax.models import attention_kernels
    original = attention_kernels._chunked
    monkeypatch.setattr(attention_kernels, "_chunked", lambda q, k, v, scale, mask: original(q, k, v, scale, mask) + 1)
    path, failed = suite.run_all(train.get_config("size=micro"), tmp_path / "b.json", steps=1, only=["attention"])
    assert failed == ["attention"] and "out of tolerance: chunked/" in path.read_text()
