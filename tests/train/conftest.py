"""Shared pieces of the training tests: the tiny synthetic datasets and an XLA compile cache per session, and
`mvrag train` / python snippets run as subprocesses (signals, fake device counts and several processes need them)."""

import json
import os
import pathlib
import subprocess
import sys

import pytest

REPO = pathlib.Path(__file__).resolve().parents[2]
# The real trainer at its smallest (configs/train.py:size=micro, the tiny model shrunk to compile fast): 2 objects
# per step (per process: `data.batch_size`), a log line and a metrics record per step.
MICRO = "configs/train.py:size=micro"
TINY = ["--config", MICRO, "--config.train.batch_size=2", "--config.data.batch_size=2", "--config.train.log_every=1",
        "--config.train.optimizer.warmup_steps=2"]


def subprocess_env(**extra: str) -> dict[str, str]:
    env = {**os.environ, "PYTHONPATH": str(REPO), "JAX_PLATFORMS": "cpu", "TRANSFORMERS_VERBOSITY": "error"}
    env.pop("XLA_FLAGS", None)
    return {**env, **extra}


def train_argv(workdir, data_dir, cache_dir, *overrides: str) -> list[str]:
    return [sys.executable, "-m", "mvrag_jax", "train", *TINY, f"--workdir={workdir}",
            f"--config.data.data_dir={data_dir}", f"--compile_cache_dir={cache_dir}", *overrides]


def run_train(workdir, data_dir, cache_dir, *overrides: str, timeout: float = 900) -> dict:
    """`mvrag train` in a subprocess; its summary (the JSON line it prints last)."""
    proc = subprocess.run(train_argv(workdir, data_dir, cache_dir, *overrides), cwd=REPO, env=subprocess_env(),
                          capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def run_python(code: str, *args: str, timeout: float = 600, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code, *map(str, args)], cwd=REPO, env=subprocess_env(**env), capture_output=True,
                          text=True, timeout=timeout)


@pytest.fixture(scope="session")
def train_data_dir(tmp_path_factory) -> pathlib.Path:
    """configs/train.py:size=micro's datasets, built once."""
    from configs import train
    from data_pipelines import build
    data_dir = tmp_path_factory.mktemp("train_data")
    cfg = train.get_config("size=micro")
    cfg.data.data_dir = str(data_dir)
    build.build_all(cfg.data, ["mode_3d", "mode_2d"])
    return data_dir


@pytest.fixture(scope="session")
def compile_cache(tmp_path_factory) -> pathlib.Path:
    """One persistent XLA cache for every training subprocess of the session: one compile per mesh."""
    return tmp_path_factory.mktemp("xla_cache")
