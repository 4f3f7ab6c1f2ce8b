"""A captioned image collection: a JSON-lines file of `{"image": relative path, "caption": text}` beside its images.

    collection.jsonl          one object per line; blank lines are ignored, other keys are ignored
    images/red_cube_0.png     paths are relative to the folder holding the .jsonl (the collection root)

Image paths must stay inside the root: absolute paths and `..` are refused when the collection is read, so an index
never points at files its author did not ship. `write_collection` makes one from in-memory images (demos, tests).
"""

import array
import dataclasses
import heapq
import json
import mmap
import pathlib
import posixpath
import re
import tempfile
from typing import Any, Iterable, Iterator, Mapping, Sequence

import numpy as np
from PIL import Image

from mvrag_jax.retrieval.base import RetrievalError
from mvrag_jax.errors import PathNotFoundError

COLLECTION_FILE = "collection.jsonl"
IMAGES_FOLDER = "images"
SORT_RUN = 1_000_000  # records sorted in memory at once by `sorted_by_image` (~0.5 GB of Python objects)
_SAFE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")


class CollectionError(RetrievalError):
    """A collection file is missing, empty or has a bad line; the message names the line and the fix."""


@dataclasses.dataclass(frozen=True)
class CollectionRecord:
    image: str    # POSIX path relative to the collection root, normalised ("./a//b.png" -> "a/b.png")
    caption: str

    def to_json(self) -> str:
        return json.dumps({"image": self.image, "caption": self.caption}, ensure_ascii=False)


def normalize_image_path(value: str, where: str) -> str:
    """A record's image path, checked to stay inside the collection root; `where` prefixes the error."""
    if "\\" in value:  # a Windows path would be one odd file name on POSIX; ask for '/' instead of guessing
        raise CollectionError(f"{where}: image path {value!r} uses '\\'; write relative paths with '/'")
    if value.startswith("/") or re.match(r"^[A-Za-z]:", value):
        raise CollectionError(f"{where}: image path {value!r} is absolute; write it relative to the folder of the "
                              "collection file so the collection can be moved")
    normalised = posixpath.normpath(value)
    if normalised == ".." or normalised.startswith("../") or normalised == ".":
        raise CollectionError(f"{where}: image path {value!r} leaves the collection root; keep images inside the "
                              "folder of the collection file")
    return normalised


def parse_record(line: str, where: str) -> CollectionRecord:
    try:
        value = json.loads(line)
    except json.JSONDecodeError as e:
        raise CollectionError(f"{where}: not valid JSON ({e.msg} at column {e.colno}); each line must be "
                              '{"image": "relative/path.jpg", "caption": "..."}') from e
    if not isinstance(value, dict):
        raise CollectionError(f"{where}: expected a JSON object with image and caption, got {type(value).__name__}")
    image, caption = value.get("image"), value.get("caption")
    if not isinstance(image, str) or not image:
        raise CollectionError(f"{where}: 'image' must be a non-empty relative path string, got {image!r}")
    if not isinstance(caption, str):
        raise CollectionError(f"{where}: 'caption' must be a string, got {caption!r}")
    return CollectionRecord(normalize_image_path(image, where), caption)


def read_collection(path: str | pathlib.Path) -> tuple[pathlib.Path, list[CollectionRecord]]:
    """(collection root, records in file order) of a .jsonl collection; every problem is a CollectionError naming
    the line (missing file: FileNotFoundError)."""
    path = pathlib.Path(path).expanduser().absolute()
    if not path.is_file():
        raise PathNotFoundError(f"collection file {path} does not exist; pass --collection with a .jsonl file of "
                                '{"image": ..., "caption": ...} lines')
    records = []
    with open(path, encoding="utf-8") as f:
        for number, line in enumerate(f, 1):
            if line.strip():
                records.append(parse_record(line, f"{path}:{number}"))
    if not records:
        raise CollectionError(f"collection {path} has no records; add one JSON line per image")
    return path.parent, records


def iter_collection(path: str | pathlib.Path) -> tuple[pathlib.Path, Iterator[CollectionRecord]]:
    """(collection root, its records in file order, read lazily): `read_collection` for files of any size."""
    path = pathlib.Path(path).expanduser().absolute()
    if not path.is_file():
        raise PathNotFoundError(f"collection file {path} does not exist; pass --collection with a .jsonl file of "
                                '{"image": ..., "caption": ...} lines')

    def records() -> Iterator[CollectionRecord]:
        empty = True
        with open(path, encoding="utf-8") as f:
            for number, line in enumerate(f, 1):
                if line.strip():
                    empty = False
                    yield parse_record(line, f"{path}:{number}")
        if empty:
            raise CollectionError(f"collection {path} has no records; add one JSON line per image")
    return path.parent, records()


def sorted_by_image(records: Iterable[CollectionRecord], run: int = SORT_RUN) -> Iterator[CollectionRecord]:
    """`sorted(records, key=image path)` in bounded memory: runs of `run` records are sorted and spilled to
    temporary files, then merged (an external merge sort; one run needs no file)."""
    with tempfile.TemporaryDirectory(prefix="mvrag-sort-") as scratch:
        runs, chunk = [], []
        for record in records:
            chunk.append(record)
            if len(chunk) == run:
                runs.append(_spill(pathlib.Path(scratch) / f"run_{len(runs):05d}.jsonl", chunk))
        if not runs:
            yield from sorted(chunk, key=lambda r: r.image)
            return
        if chunk:
            runs.append(_spill(pathlib.Path(scratch) / f"run_{len(runs):05d}.jsonl", chunk))
        files = [open(path, encoding="utf-8") for path in runs]
        try:
            streams = [(parse_record(line, str(path)) for line in f) for path, f in zip(runs, files)]
            yield from heapq.merge(*streams, key=lambda r: r.image)
        finally:
            for f in files:
                f.close()


def _spill(path: pathlib.Path, chunk: list[CollectionRecord]) -> pathlib.Path:
    chunk.sort(key=lambda r: r.image)
    with open(path, "w", encoding="utf-8") as f:
        f.writelines(record.to_json() + "\n" for record in chunk)
    chunk.clear()
    return path


def write_records(path: pathlib.Path, records: Iterable[CollectionRecord]) -> int:
    """One JSON line per record, plus `<path>.offsets.npy` (int64 [n + 1] byte offsets of the lines) so a
    `RecordFile` reads any record without loading the others; returns n."""
    return sum(1 for _ in writing_records(path, records))


def writing_records(path: pathlib.Path, records: Iterable[CollectionRecord]) -> Iterator[CollectionRecord]:
    """Yield `records` while `write_records` writes them: one pass over a stream feeds an index and its records
    file, and memory stays flat. The offsets file is written when the stream ends."""
    offsets, end = array.array("q", [0]), 0  # 8 bytes a record, not a Python int's 36
    with open(path, "wb") as f:
        for record in records:
            line = (record.to_json() + "\n").encode("utf-8")
            f.write(line)
            end += len(line)
            offsets.append(end)
            yield record
    np.save(offsets_path(path), np.frombuffer(offsets, np.int64))


def offsets_path(path: pathlib.Path) -> pathlib.Path:
    return path.with_name(path.name + ".offsets.npy")


class RecordFile(Sequence):
    """The records of an index's records.jsonl, read one at a time through its offsets (memory-mapped), so a
    collection of millions costs no memory until a record is asked for. Without the offsets file (an index
    written before it existed) the lines are scanned once at open."""

    def __init__(self, path: pathlib.Path):
        self.path = path
        size = path.stat().st_size
        with open(path, "rb") as f:  # the map keeps its own handle
            self._data = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) if size else b""
        if offsets_path(path).is_file():
            self._offsets = np.load(offsets_path(path), mmap_mode="r")
        else:
            ends = np.flatnonzero(np.frombuffer(self._data, np.uint8) == ord("\n")) + 1
            self._offsets = np.concatenate([[0], ends]).astype(np.int64)
        if self._offsets[-1] != size:
            raise CollectionError(f"{path} does not match {offsets_path(path).name} (changed after indexing?); "
                                  "rebuild the index with `mvrag index --overwrite`")

    def __len__(self) -> int:
        return len(self._offsets) - 1

    def __getitem__(self, i):
        if isinstance(i, slice):
            return [self[j] for j in range(*i.indices(len(self)))]
        if not -len(self) <= i < len(self):
            raise IndexError(i)
        i %= len(self)
        line = self._data[int(self._offsets[i]):int(self._offsets[i + 1])].decode("utf-8")
        return parse_record(line, f"{self.path}:{i + 1}")


def write_collection(records: Iterable[Mapping[str, Any]], out_dir: str | pathlib.Path, *,
                     overwrite: bool = False) -> pathlib.Path:
    """Write `{"name": str, "image": uint8 [h, w, 3], "caption": str}` records as a collection folder (images as
    PNG under images/, atomically) and return the path of its collection.jsonl."""
    from mvrag_jax.convert.checkpoint import atomic_directory  # heavy package; only writers need it

    out_dir = pathlib.Path(out_dir).expanduser().absolute()
    with atomic_directory(out_dir, overwrite) as tmp:
        (tmp / IMAGES_FOLDER).mkdir()
        written, names = [], set()
        for record in records:
            name = str(record["name"])
            if not _SAFE_NAME.match(name) or name in names:
                raise CollectionError(f"record name {name!r} is {'repeated' if name in names else 'not a safe file name'}"
                                      "; use unique names of letters, digits, '.', '_' and '-'")
            names.add(name)
            relative = f"{IMAGES_FOLDER}/{name}.png"
            Image.fromarray(np.asarray(record["image"], np.uint8)).save(tmp / relative)
            written.append(CollectionRecord(relative, str(record["caption"])))
        if not written:
            raise CollectionError("write_collection got no records; pass at least one image")
        write_records(tmp / COLLECTION_FILE, written)
    return out_dir / COLLECTION_FILE
