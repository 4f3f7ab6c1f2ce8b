"""A captioned image collection: a JSON-lines file of `{"image": relative path, "caption": text}` beside its images.

    collection.jsonl          one object per line; blank lines are ignored, other keys are ignored
    images/red_cube_0.png     paths are relative to the folder holding the .jsonl (the collection root)

Image paths must stay inside the root: absolute paths and `..` are refused when the collection is read, so an index
never points at files its author did not ship. `write_collection` makes one from in-memory images (demos, tests).
"""

import dataclasses
import json
import pathlib
import posixpath
import re
from typing import Any, Iterable, Mapping

import numpy as np
from PIL import Image

from mvrag_jax.retrieval.base import RetrievalError
from mvrag_jax.errors import PathNotFoundError

COLLECTION_FILE = "collection.jsonl"
IMAGES_FOLDER = "images"
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


def write_records(path: pathlib.Path, records: Iterable[CollectionRecord]) -> None:
    path.write_text("".join(record.to_json() + "\n" for record in records), encoding="utf-8")


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
