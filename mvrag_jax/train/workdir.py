"""A training workdir, on local disk or in a bucket (gs://, s3://, ...), as `etils.epath` paths: what orbax takes.

    root = as_path("gs://my-bucket/runs/r1")          # epath.Path; a local one is expanded and made absolute
    is_remote(root)                                    # True: no appends, no renames, no empty folders
    write_atomic(root / "loss.png", png_bytes)         # a reader sees the old file or the new one, never a part
    log = PartLog(root / "metrics", ".jsonl")          # an append-only log as numbered part objects
    log.append(b'{"step": 1}\n')                       # one upload of only these bytes
    read_parts(root / "metrics", ".jsonl")             # every part, in order (all runs)

A local workdir is written exactly as a plain folder (appends, `os.replace`). A bucket has no appends and no atomic
rename (gcsfs renames by copy + delete), but an object appears only once its upload completes, so one whole-file
upload is the atomic write there. Logs that grow (metrics records, TensorBoard events) therefore go up as new
objects holding only what is new: `PartLog` parts for records, and for TensorBoard one closed event file per sync
(`upload_folder`), so upload volume grows linearly with a run's length.

gs:// needs gcsfs for epath and tensorstore's built-in GCS driver for orbax's arrays (requirements-tpu.txt); both
take the TPU VM's service account.
"""

import concurrent.futures
import os
import pathlib
import re

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


class PartLog:
    """An append-only log in a bucket, as numbered part objects FOLDER/<run>-<part><suffix> (`00003-000012.jsonl`):
    each `append` uploads one new object holding only the bytes given, so a days-long run uploads every byte once
    (whole-file re-uploads grow with the square of the run's length). The run number is one past the newest run
    whose parts are already there, so `read_parts` returns every run's parts in the order they were written.
    Only one writer per folder (process 0; the workdir lock keeps a second job out).
    """

    def __init__(self, folder: str | os.PathLike, suffix: str):
        self.folder, self.suffix = epath.Path(folder), suffix
        runs = [run for run, _ in _part_numbers(self.folder, suffix)]
        self.run, self.part = (max(runs) + 1 if runs else 0), 0

    def append(self, data: bytes) -> int:
        """Upload `data` as the next part (nothing for b""); the bytes uploaded."""
        if not data:
            return 0
        write_atomic(self.folder / f"{self.run:05d}-{self.part:06d}{self.suffix}", data)
        self.part += 1
        return len(data)


def read_parts(folder: str | os.PathLike, suffix: str, *, threads: int = 16) -> list[bytes]:
    """The bytes of every part under `folder` (PartLog's names), by run then part; [] when there are none.
    Read concurrently: a long run has thousands of small objects, and a bucket answers each in tens of ms."""
    folder = epath.Path(folder)
    names = [f"{run:05d}-{part:06d}{suffix}" for run, part in sorted(_part_numbers(folder, suffix))]
    with concurrent.futures.ThreadPoolExecutor(max(1, min(threads, len(names)))) as pool:
        return list(pool.map(lambda name: (folder / name).read_bytes(), names))


def _part_numbers(folder: epath.Path, suffix: str) -> list[tuple[int, int]]:
    pattern = re.compile(r"(\d+)-(\d+)" + re.escape(suffix))
    if not folder.is_dir():
        return []
    found = (pattern.fullmatch(p.name) for p in folder.iterdir())
    return [(int(m.group(1)), int(m.group(2))) for m in found if m]


def upload_folder(local: pathlib.Path, remote: str | os.PathLike) -> int:
    """Upload every file under `local` to `remote` (same relative names), one whole upload each, then delete it
    locally: for files that are complete (a closed TensorBoard event file). The bytes uploaded."""
    sent = 0
    for path in sorted(p for p in local.rglob("*") if p.is_file()):
        data = path.read_bytes()
        write_atomic(epath.Path(remote) / path.relative_to(local).as_posix(), data)
        path.unlink()
        sent += len(data)
    return sent
