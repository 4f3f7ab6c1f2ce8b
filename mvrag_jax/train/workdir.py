"""A training workdir, on local disk or in a bucket (gs://, s3://, ...), as `etils.epath` paths: what orbax takes.

    root = as_path("gs://my-bucket/runs/r1")          # epath.Path; a local one is expanded and made absolute
    is_remote(root)                                    # True: no appends, no renames, no empty folders
    write_atomic(root / "loss.png", png_bytes)         # a reader sees the old file or the new one, never a part
    with Mirror(root / "tb") as mirror:                # a local staging folder, uploaded file by file
        ... write into mirror.local ...; mirror.sync() # uploads the files changed since the last sync

A local workdir is written exactly as a plain folder (appends, `os.replace`). A bucket has no appends and no atomic
rename (gcsfs renames by copy + delete), but an object appears only once its upload completes, so one whole-file
upload is the atomic write there. Files that grow (metrics.jsonl, TensorBoard event files) are therefore written to
a local staging folder and uploaded whole by `Mirror.sync()`.

gs:// needs gcsfs for epath and tensorstore's built-in GCS driver for orbax's arrays (requirements-tpu.txt); both
take the TPU VM's service account.
"""

import os
import pathlib
import shutil
import tempfile

from etils import epath


def as_path(workdir: str | os.PathLike) -> epath.Path:
    """`workdir` as an epath.Path: gs://... kept as a URI, a local path expanded (~) and made absolute."""
    path = epath.Path(workdir)
    return path if is_remote(path) else path.expanduser().absolute()


def is_remote(path: str | os.PathLike) -> bool:
    """True for a URI (gs://bucket/..., s3://...), False for a local path."""
    return "://" in os.fspath(path)


def local_cache(remote: epath.Path, kind: str) -> pathlib.Path:
    """A per-host local folder standing for `remote` (e.g. datasets built for a run in a bucket):
    ~/.cache/mvrag_jax/<kind>/gs/my-bucket/runs/r1."""
    scheme, rest = os.fspath(remote).split("://", 1)
    return pathlib.Path("~/.cache/mvrag_jax").expanduser() / kind / scheme / rest.strip("/")


def write_atomic(path: epath.Path, data: bytes) -> None:
    """Write `data` to `path` so that no reader ever sees part of it (parents are created)."""
    path = epath.Path(path)
    if is_remote(path):
        path.write_bytes(data)  # one upload; the object appears only once it is complete
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_bytes(data)
    os.replace(tmp, path)


class Mirror:
    """A local staging folder whose files `sync()` uploads to `remote` (same relative paths), each changed file as
    one whole upload. `seed(name)` first copies an existing remote file down, so a resumed run goes on appending to it.
    """

    def __init__(self, remote: str | os.PathLike):
        self.remote = epath.Path(remote)
        self.local = pathlib.Path(tempfile.mkdtemp(prefix="mvrag_mirror_"))
        self._uploaded: dict[pathlib.Path, tuple[int, int]] = {}  # file -> (size, mtime_ns) at its last upload

    def seed(self, name: str) -> pathlib.Path:
        """The local staging file for `name`, holding the remote file's content if there is one."""
        local, remote = self.local / name, self.remote / name
        local.parent.mkdir(parents=True, exist_ok=True)
        if remote.is_file():
            local.write_bytes(remote.read_bytes())
            self._uploaded[local] = _signature(local)  # already there: no upload until it changes
        return local

    def sync(self) -> list[str]:
        """Upload every staged file that changed since its last upload; returns their relative names."""
        sent = []
        for local in sorted(p for p in self.local.rglob("*") if p.is_file()):
            signature = _signature(local)
            if self._uploaded.get(local) == signature:
                continue
            name = local.relative_to(self.local).as_posix()
            write_atomic(self.remote / name, local.read_bytes())
            self._uploaded[local] = signature
            sent.append(name)
        return sent

    def close(self) -> None:
        """A last sync, then the staging folder is removed."""
        try:
            self.sync()
        finally:
            shutil.rmtree(self.local, ignore_errors=True)

    def __enter__(self) -> "Mirror":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _signature(path: pathlib.Path) -> tuple[int, int]:
    stat = path.stat()
    return stat.st_size, stat.st_mtime_ns
