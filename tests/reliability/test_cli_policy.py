"""The CLI's error policy (mvrag_jax/cli/main.py, mvrag_jax/errors.py): our errors and the disk's are one line and
exit 2, anything else keeps its traceback (exit 1), --debug shows every traceback; unknown config fields get a
suggestion; read-only, full or file-shaped output paths are answered in one line and leave nothing behind."""

import dataclasses
import errno
import shutil

import numpy as np
import pytest

from mvrag_jax.cli import main
import importlib
main_module = importlib.import_module("mvrag_jax.cli.main")
from mvrag_jax.errors import OutputPathError, UsageError, ensure_writable_dir, path_error_line
from tests.conftest import TINY_RELEASE
from tests.reliability.conftest import last_line, mvrag_on_disk, needs_mount


@pytest.mark.parametrize("override, answer", [
    ("--config.train.stepz=2", "unknown config field --config.train.stepz; did you mean --config.train.steps?"),
    ("--config.mesh.foo=2", "unknown config field --config.mesh.foo; --config.mesh has the fields data, dcn_data, dcn_fsdp, fsdp, tensor"),
    ("--config.train.steps.x=1", "--config.train.steps is a value, not a group of fields"),
])
def test_unknown_config_fields_are_one_line_with_a_suggestion(capsys, tmp_path, override, answer):
    assert main(["mvrag", "train", "--workdir", str(tmp_path / "run"), override]) == 2
    err = capsys.readouterr().err
    assert answer in err and "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "run").exists()


def _with_run(monkeypatch, name, run):
    monkeypatch.setitem(main_module.COMMANDS, name, dataclasses.replace(main_module.COMMANDS[name], run=run))


def _raise(error):
    def run(fv, argv):
        raise error
    return run


def test_our_errors_are_one_line_exit_2_and_debug_shows_the_traceback(monkeypatch, capsys):
    _with_run(monkeypatch, "retrieve", _raise(UsageError("--k=-1; give k >= 0")))
    argv = ["mvrag", "retrieve", "--folder", "x", "--prompt", "p"]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err == "mvrag retrieve: error: --k=-1; give k >= 0\n"
    assert main(argv + ["--debug"]) == 2
    err = capsys.readouterr().err
    assert "Traceback" in err and last_line(err) == "mvrag retrieve: error: --k=-1; give k >= 0"


def test_other_errors_keep_their_traceback(monkeypatch, capsys):
    # A plain ValueError (orbax's, JAX's, or a bug of ours) is no longer dressed up as a user error.
    _with_run(monkeypatch, "retrieve", _raise(ValueError("internal invariant broken")))
    with pytest.raises(ValueError, match="internal invariant broken"):  # Python prints it and exits 1
        main(["mvrag", "retrieve", "--folder", "x", "--prompt", "p"])
    _with_run(monkeypatch, "retrieve", _raise(KeyboardInterrupt()))
    assert main(["mvrag", "retrieve", "--folder", "x", "--prompt", "p"]) == 130


def test_disk_errors_wrapped_by_a_library_are_recognised(tmp_path):
    # What tensorstore (under orbax) raises on a full disk: a ValueError carrying the OS error code and path.
    wrapped = ValueError(f'RESOURCE_EXHAUSTED: Error writing "x" in OCDBT database at local file "{tmp_path}/gone/'
                         f'ocdbt/": Failed writing: "{tmp_path}/gone/ocdbt/d/1": Failed to write 4210688 bytes to '
                         "file 4: No space left on device [os_error_code='28']")
    assert path_error_line(wrapped) == (f"[ENOSPC] No space left on device: {tmp_path} (writing gone/ocdbt/d/1); "
                                        "free space on that disk or write elsewhere")
    assert path_error_line(OSError(errno.EROFS, "Read-only file system", "/ro/x")).startswith(
        "[EROFS] Read-only file system: /ro/x")
    assert path_error_line(ValueError("shapes (2,) and (3,) differ")) is None  # a bug: keeps its traceback
    assert path_error_line(OSError(errno.ECONNRESET, "Connection reset")) is None


def test_a_workdir_that_is_a_file_is_one_line(tmp_path, capsys):
    workdir = tmp_path / "run"
    workdir.write_text("not a folder")
    assert main(["mvrag", "train", "--workdir", str(workdir), "--compile_cache_dir", "none"]) == 2
    err = capsys.readouterr().err
    assert last_line(err) == (f"mvrag train: error: --workdir {workdir} cannot be written ([ENOTDIR] it is a file, "
                              f"not a folder: {workdir}); pass a writable folder on a disk with free space")
    assert workdir.read_text() == "not a folder"
    with pytest.raises(OutputPathError):
        ensure_writable_dir(workdir / "sub", "--out")


@needs_mount
def test_read_only_workdir_and_out_are_one_line(tmp_path):
    disk = tmp_path / "disk"
    proc, files = mvrag_on_disk(tmp_path, "1m", ["train", "--workdir", str(disk / "run"), "--compile_cache_dir",
                                                 "none"], read_only=True)
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert last_line(proc.stderr) == (f"mvrag train: error: --workdir {disk}/run cannot be written ([EROFS] "
                                      f"Read-only file system: {disk}/run); pass a writable folder on a disk with "
                                      "free space")
    assert files == [] and "Traceback" not in proc.stderr
    shutil.rmtree(disk), (tmp_path / "listing.txt").unlink()
    proc, files = mvrag_on_disk(tmp_path, "1m", ["generate", "--release", str(TINY_RELEASE), "--prompt", "a cube",
                                                 "--out", str(disk / "out"), "--compile_cache_dir", "none"],
                                read_only=True)
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert "Read-only file system" in last_line(proc.stderr) and f"--out {disk}/out" in last_line(proc.stderr)
    assert files == [] and "Traceback" not in proc.stderr


@needs_mount
@pytest.mark.slow
def test_convert_and_export_onto_a_full_disk_leave_nothing(tmp_path, tiny_ckpt):
    disk = tmp_path / "disk"  # 9 MB of tiny release do not fit in 300 KB
    proc, files = mvrag_on_disk(tmp_path, "300k", ["convert", "--release", str(TINY_RELEASE), "--out",
                                                   str(disk / "ckpt"), "--compile_cache_dir", "none"])
    assert proc.returncode == 2, proc.stderr[-3000:]
    line = last_line(proc.stderr)
    assert line.startswith(f"mvrag convert: error: [ENOSPC] No space left on device: {disk} (writing .ckpt.tmp-"), line
    assert "Traceback" not in proc.stderr  # nor orbax's logged write error or tensorstore's closed-loop callbacks
    assert files == []  # the temporary folder went with the error
    shutil.rmtree(disk), (tmp_path / "listing.txt").unlink()
    proc, files = mvrag_on_disk(tmp_path, "300k", ["export", "--ckpt", str(tiny_ckpt), "--out", str(disk / "rel"),
                                                   "--compile_cache_dir", "none"])
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert "[ENOSPC] No space left on device" in last_line(proc.stderr) and files == []
    assert "Traceback" not in proc.stderr


def test_disk_full_while_generating_leaves_no_partial_object(tmp_path, monkeypatch):
    # The object folder is published whole: a failing write (here the third PNG) leaves neither it nor its temp.
    from mvrag_jax.pipeline import generate
    from mvrag_jax.pipeline.generate import ObjectJob
    calls = []

    def full_disk(path, image):
        calls.append(path)
        if len(calls) == 3:
            raise OSError(errno.ENOSPC, "No space left on device", str(path))
        path.write_bytes(b"png")
    monkeypatch.setattr(generate, "write_png", full_disk)
    job = next(iter(generate.plan_objects([generate.PromptEntry(0, "a cube", None)], (0,))))
    assert isinstance(job, ObjectJob)
    views = np.zeros((4, 8, 8, 3), np.uint8)
    with pytest.raises(OSError):
        generate.write_object(tmp_path, job, views, [], {"prompt": "a cube"})
    assert list(tmp_path.iterdir()) == []
    calls.clear()
    monkeypatch.setattr(generate, "write_png", lambda path, image: path.write_bytes(b"png"))
    folder = generate.write_object(tmp_path, job, views, [], {"prompt": "a cube"})
    assert sorted(p.name for p in folder.iterdir()) == sorted([f"view_{i}.png" for i in range(4)] + [
        "grid.png", generate.RECORD])
    assert [p.name for p in tmp_path.iterdir()] == [job.name]


@pytest.mark.slow
def test_tfds_notices_are_quiet_unless_verbose(tmp_path):
    import subprocess
    import sys
    from tests.train.conftest import REPO, subprocess_env
    base = [sys.executable, "-m", "mvrag_jax", "data", "build", "--config", "configs/data.py:size=tiny",
            "--compile_cache_dir", "none"]
    quiet = subprocess.run(base + [f"--config.data_dir={tmp_path / 'a'}"], cwd=REPO, env=subprocess_env(),
                           capture_output=True, text=True, timeout=600)
    assert quiet.returncode == 0, quiet.stderr[-3000:]
    for noise in ("Using custom data configuration", "Downloading and preparing dataset"):
        assert noise not in quiet.stdout + quiet.stderr
    assert [line.split(":")[0] for line in quiet.stdout.strip().splitlines()] == ["mode_3d", "mode_2d"]  # only ours
    loud = subprocess.run(base + [f"--config.data_dir={tmp_path / 'b'}", "--verbose"], cwd=REPO, env=subprocess_env(),
                          capture_output=True, text=True, timeout=600)
    assert loud.returncode == 0 and "Using custom data configuration" in loud.stderr
    assert "tfds: Downloading and preparing dataset" in loud.stderr
