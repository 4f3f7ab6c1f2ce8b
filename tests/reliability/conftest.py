"""Fault injection for the reliability tests: a private, tiny or read-only disk (a tmpfs mounted in a user + mount
namespace with `unshare -rm`: no root needed, nothing visible outside the command) and `mvrag` run on it."""

import os
import pathlib
import shlex
import shutil
import subprocess
import sys

import pytest

from tests.train.conftest import REPO, subprocess_env, train_data_dir  # noqa: F401 (a fixture)


@pytest.fixture(scope="session")
def compile_cache(tmp_path_factory) -> pathlib.Path:
    """One XLA cache for the session's training runs; MVRAG_TEST_XLA_CACHE names a lasting one (a loaded machine
    compiles the micro step for many minutes)."""
    lasting = os.environ.get("MVRAG_TEST_XLA_CACHE")
    return pathlib.Path(lasting) if lasting else tmp_path_factory.mktemp("xla_cache")


def _can_mount() -> bool:
    if shutil.which("unshare") is None:
        return False
    probe = subprocess.run(["unshare", "-rm", "sh", "-c", "mount -t tmpfs -o size=64k tmpfs /mnt"],
                           capture_output=True)
    return probe.returncode == 0


CAN_MOUNT = _can_mount()
needs_mount = pytest.mark.skipif(not CAN_MOUNT, reason="needs `unshare -rm` (user namespaces) to mount a small disk")


def mvrag_on_disk(tmp_path, size: str, args: list[str], *, read_only: bool = False, before: str = "",
                  after: str = "", timeout: float = 600) -> tuple[subprocess.CompletedProcess, list[str]]:
    """Run `python -m mvrag_jax ARGS` with a fresh tmpfs of `size` at tmp_path/"disk" (read-only when asked, after
    the shell commands `before` ran on it; `after` runs last, e.g. to copy what is left off the disk); returns the
    process and the disk's file list after the run (relative paths; the disk vanishes with the namespace)."""
    disk, listing = tmp_path / "disk", tmp_path / "listing.txt"
    disk.mkdir()
    command = " ".join(shlex.quote(a) for a in [sys.executable, "-m", "mvrag_jax", *args])
    script = (f"mount -t tmpfs -o size={size} tmpfs {disk} || exit 99\n{before}\n"
              + (f"mount -o remount,ro {disk} || exit 98\n" if read_only else "")
              + f"{command}\nrc=$?\n(cd {disk} && find . -mindepth 1 | sort) > {listing}\n{after}\nexit $rc\n")
    proc = subprocess.run(["unshare", "-rm", "sh", "-c", script], cwd=REPO, env=subprocess_env(),
                          capture_output=True, text=True, timeout=timeout)
    assert proc.returncode not in (98, 99), proc.stderr
    return proc, listing.read_text().split()


def last_line(text: str) -> str:
    return text.strip().splitlines()[-1]
