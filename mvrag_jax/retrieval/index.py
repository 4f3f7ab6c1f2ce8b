"""A retrieval index on disk: built once from a collection (`mvrag index`), opened by `mvrag retrieve` / generate.

Layout of IDX (written to a temporary sibling folder, then renamed into place):
  manifest.json   {"format": 1, "kind": "bm25"|"dense", "collection": ..., "root": ..., "count": n, "<kind>": {...}}
  records.jsonl   the collection's records, normalised and sorted by image path (the tie-break order)
  bm25/           bm25s index (kind bm25)              embeddings.npy   [n, d] float32, L2-normalised (kind dense)
Images are not copied: they are read from `root` (the collection's folder) at retrieval time.
"""

import json
import logging
import pathlib
from typing import Any

from mvrag_jax.retrieval.base import RetrievalError
from mvrag_jax.retrieval.collection import CollectionRecord, parse_record, read_collection, write_records
from mvrag_jax.errors import PathNotFoundError

_LOG = logging.getLogger(__name__)

KINDS = ("bm25", "dense")
MANIFEST_FILE = "manifest.json"
RECORDS_FILE = "records.jsonl"
FORMAT_VERSION = 1


def build_index(collection: str | pathlib.Path, out: str | pathlib.Path, *, kind: str = "bm25",
                clip_model: str | None = None, overwrite: bool = False, show_progress: bool = True) -> pathlib.Path:
    """Index the captioned collection (.jsonl) into the folder `out`, atomically; returns `out`."""
    from mvrag_jax.convert.checkpoint import atomic_directory  # heavy package; only writers need it

    if kind not in KINDS:
        raise RetrievalError(f"index kind {kind!r} is unknown; choose one of {', '.join(KINDS)}")
    if (kind == "dense") != (clip_model is not None):
        raise RetrievalError("a dense index needs --clip_model (a transformers CLIPModel folder)" if kind == "dense"
                             else "--clip_model is only used by --kind dense; drop it or pass --kind dense")
    root, records = read_collection(collection)
    records = sorted(records, key=lambda r: r.image)
    with atomic_directory(pathlib.Path(out).expanduser(), overwrite) as tmp:
        if kind == "bm25":
            from mvrag_jax.retrieval import bm25
            _warn_missing(root, records)
            settings = bm25.write_index(tmp, records)
        else:
            from mvrag_jax.retrieval import dense
            records, settings = dense.write_index(tmp, root, records, clip_model, show_progress=show_progress)
        write_records(tmp / RECORDS_FILE, records)
        manifest = {"format": FORMAT_VERSION, "kind": kind, "collection": str(pathlib.Path(collection).absolute()),
                    "root": str(root), "count": len(records), kind: settings}
        (tmp / MANIFEST_FILE).write_text(json.dumps(manifest, indent=1))
    return pathlib.Path(out).expanduser().absolute()


def _warn_missing(root: pathlib.Path, records: list[CollectionRecord]) -> None:
    """BM25 reads no image at index time; say now (once) if some are already missing."""
    missing = [r.image for r in records if not (root / r.image).is_file()]
    if missing:
        _LOG.warning("%d of %d images of the collection are missing under %s (first: %s); they will be skipped at "
                     "retrieval", len(missing), len(records), root, missing[0])


def read_manifest(index: str | pathlib.Path) -> tuple[pathlib.Path, dict[str, Any]]:
    index = pathlib.Path(index).expanduser().absolute()
    path = index / MANIFEST_FILE
    if not path.is_file():
        raise PathNotFoundError(f"{index} is not a retrieval index (no {MANIFEST_FILE}); build one with "
                                "`mvrag index --collection FILE --out DIR`")
    try:
        manifest = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise RetrievalError(f"{path} is not valid JSON ({e}); rebuild the index with `mvrag index --overwrite`") from e
    if manifest.get("format") != FORMAT_VERSION or manifest.get("kind") not in KINDS:
        raise RetrievalError(f"{path}: format {manifest.get('format')!r} kind {manifest.get('kind')!r} is not one this "
                             f"version reads (format {FORMAT_VERSION}, kinds {KINDS}); rebuild the index")
    return index, manifest


def open_index(index: str | pathlib.Path, *, clip_model: str | None = None):
    """The retriever of an index folder (bm25 or dense; `clip_model` overrides the dense index's model path)."""
    index, manifest = read_manifest(index)
    root = pathlib.Path(manifest["root"])
    if not root.is_dir():
        raise RetrievalError(f"index {index} reads images from {root}, which no longer exists; move the collection "
                             "back or rebuild the index from its new place")
    lines = (index / RECORDS_FILE).read_text(encoding="utf-8").splitlines()
    records = [parse_record(line, f"{index / RECORDS_FILE}:{n}") for n, line in enumerate(lines, 1)]
    if manifest["kind"] == "bm25":
        if clip_model is not None:
            raise RetrievalError(f"index {index} is a BM25 index; --clip_model only applies to dense indexes")
        from mvrag_jax.retrieval.bm25 import BM25Retriever
        return BM25Retriever(index, manifest, root, records)
    from mvrag_jax.retrieval.dense import DenseRetriever
    return DenseRetriever(index, manifest, root, records, clip_model)
