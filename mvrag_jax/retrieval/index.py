"""A retrieval index on disk: built once from a collection (`mvrag index`), opened by `mvrag retrieve` / generate.

Layout of IDX (written to a temporary sibling folder, then renamed into place):
  manifest.json   {"format": 1, "kind": "bm25"|"dense", "collection": ..., "root": ..., "count": n, "<kind>": {...}}
  records.jsonl   the collection's records, normalised and sorted by image path (the tie-break order)
  records.jsonl.offsets.npy  byte offsets of its lines (records are read one at a time: millions cost no memory)
  postings/       memory-mapped BM25 postings (kind bm25, retrieval/postings.py)
  embeddings.npy  [n, d] float32, L2-normalised (kind dense)
Images are not copied: they are read from `root` (the collection's folder) at retrieval time.

A sharded BM25 index is a folder whose manifest lists shard folders (relative to it), each an ordinary BM25 index:
  manifest.json   {"format": 1, "kind": "bm25", "shards": ["shard_00000", ...], "count": total, "bm25": {...}}
Shards are built independently (`build_index(..., num_shards=N, shard_index=i)` on host i takes the records whose
CRC32 of the image path is i mod N; or any N indexes) and joined by `join_shards`; queries score them with their
joint statistics and merge (retrieval/bm25.py), so the hits are those of one index over the union.
"""

import json
import logging
import os
import pathlib
import zlib
from typing import Any, Iterable, Iterator, Sequence

from mvrag_jax.retrieval.base import RetrievalError
from mvrag_jax.retrieval.collection import (CollectionRecord, RecordFile, iter_collection, read_collection,
                                            sorted_by_image, write_records, writing_records)
from mvrag_jax.errors import PathNotFoundError

_LOG = logging.getLogger(__name__)

KINDS = ("bm25", "dense")
MANIFEST_FILE = "manifest.json"
RECORDS_FILE = "records.jsonl"
FORMAT_VERSION = 1


def build_index(collection: str | pathlib.Path, out: str | pathlib.Path, *, kind: str = "bm25",
                clip_model: str | None = None, overwrite: bool = False, show_progress: bool = True,
                num_shards: int = 1, shard_index: int | None = None) -> pathlib.Path:
    """Index the captioned collection (.jsonl) into the folder `out`, atomically; returns `out`.

    BM25 streams the collection (bounded memory at any size). `num_shards` N > 1: without `shard_index`, N shards
    under out/shard_XXXXX joined by out/manifest.json; with `shard_index` i, only shard i, an ordinary index at `out`
    (what host i of a job builds; `join_shards` joins them)."""
    from mvrag_jax.convert.checkpoint import atomic_directory  # heavy package; only writers need it

    if kind not in KINDS:
        raise RetrievalError(f"index kind {kind!r} is unknown; choose one of {', '.join(KINDS)}")
    if (kind == "dense") != (clip_model is not None):
        raise RetrievalError("a dense index needs --clip_model (a transformers CLIPModel folder)" if kind == "dense"
                             else "--clip_model is only used by --kind dense; drop it or pass --kind dense")
    _check_shards(kind, num_shards, shard_index)
    out = pathlib.Path(out).expanduser()
    if num_shards > 1 and shard_index is None:
        with atomic_directory(out, overwrite) as tmp:
            names = [shard_name(i) for i in range(num_shards)]
            for i, name in enumerate(names):
                build_index(collection, tmp / name, num_shards=num_shards, shard_index=i, show_progress=show_progress)
            _write_join(tmp, [tmp / name for name in names], relative_to=tmp)
        return out.absolute()
    if kind == "dense":
        root, records = read_collection(collection)
        records = sorted(records, key=lambda r: r.image)
    else:
        root, stream = iter_collection(collection)
        if shard_index is not None:
            stream = (r for r in stream if shard_of(r.image, num_shards) == shard_index)
        records = sorted_by_image(stream)
    with atomic_directory(out, overwrite) as tmp:
        if kind == "bm25":
            from mvrag_jax.retrieval import bm25
            missing = _MissingImages(root)
            settings = bm25.write_index(tmp, writing_records(tmp / RECORDS_FILE, missing.check(records)))
            missing.warn()
            count = missing.total
        else:
            from mvrag_jax.retrieval import dense
            records, settings = dense.write_index(tmp, root, records, clip_model, show_progress=show_progress)
            count = write_records(tmp / RECORDS_FILE, records)
        manifest = {"format": FORMAT_VERSION, "kind": kind, "collection": str(pathlib.Path(collection).absolute()),
                    "root": str(root), "count": count, kind: settings}
        if shard_index is not None:
            manifest["shard"] = {"index": shard_index, "of": num_shards}
        (tmp / MANIFEST_FILE).write_text(json.dumps(manifest, indent=1))
    return out.absolute()


def shard_name(i: int) -> str:
    return f"shard_{i:05d}"


def shard_of(image: str, num_shards: int) -> int:
    """The shard a record belongs to: CRC32 of its image path mod N (every host decides alone, the same way)."""
    return zlib.crc32(image.encode("utf-8")) % num_shards


def _check_shards(kind: str, num_shards: int, shard_index: int | None) -> None:
    if isinstance(num_shards, bool) or not isinstance(num_shards, int) or num_shards < 1:
        raise RetrievalError(f"--num_shards {num_shards!r}: pass a positive integer")
    if num_shards > 1 and kind != "bm25":
        raise RetrievalError("--num_shards applies to BM25 indexes; a dense collection of this size wants a FAISS "
                             "index (retrieval/ann.py)")
    if shard_index is not None and not 0 <= shard_index < num_shards:
        raise RetrievalError(f"--shard_index {shard_index} is not in [0, --num_shards {num_shards}); host i of N "
                             "builds shard i")


class _MissingImages:
    """BM25 reads no image at index time; checks the first CHECKED images while the records stream past (a stat per
    file of a LAION-size collection would cost more than the index) and warns once."""

    CHECKED = 10_000

    def __init__(self, root: pathlib.Path):
        self.root, self.missing, self.total, self.first = str(root), 0, 0, None

    def check(self, records: Iterable[CollectionRecord]) -> Iterator[CollectionRecord]:
        for record in records:
            self.total += 1
            if self.total <= self.CHECKED and not os.path.isfile(os.path.join(self.root, record.image)):
                self.missing += 1
                self.first = self.first or record.image
            yield record

    def warn(self) -> None:
        if self.missing:
            checked = min(self.total, self.CHECKED)
            _LOG.warning("%d of %s %d images of the collection are missing under %s (first: %s); they will be "
                         "skipped at retrieval", self.missing, "the" if checked == self.total else "the first",
                         checked, self.root, self.first)


def join_shards(shards: Sequence[str | pathlib.Path], out: str | pathlib.Path, *, overwrite: bool = False
                ) -> pathlib.Path:
    """Write a sharded BM25 index at `out` over existing BM25 index folders (built independently, e.g. one per
    host); no data is copied, the manifest names the shards relative to `out`."""
    from mvrag_jax.convert.checkpoint import atomic_directory

    if not shards:
        raise RetrievalError("join_shards needs at least one BM25 index folder (pass --join DIR,DIR,...)")
    out = pathlib.Path(out).expanduser().absolute()
    folders = [pathlib.Path(s).expanduser().absolute() for s in shards]
    with atomic_directory(out, overwrite) as tmp:
        _write_join(tmp, folders, relative_to=out)
    return out


def _write_join(folder: pathlib.Path, shards: Sequence[pathlib.Path], relative_to: pathlib.Path) -> None:
    from mvrag_jax.retrieval import bm25
    count = 0
    for shard in shards:
        index, manifest = read_manifest(shard)
        if manifest["kind"] != "bm25" or "shards" in manifest:
            raise RetrievalError(f"{index} is a {manifest['kind']}{' sharded' if 'shards' in manifest else ''} index; "
                                 "only ordinary BM25 indexes can be shards")
        bm25.check_settings(index, manifest.get("bm25", {}))
        count += manifest["count"]
    manifest = {"format": FORMAT_VERSION, "kind": "bm25", "count": count, "bm25": bm25.settings(),
                "shards": [os.path.relpath(s, relative_to) for s in shards]}
    (folder / MANIFEST_FILE).write_text(json.dumps(manifest, indent=1))


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
    """The retriever of an index folder (bm25, sharded bm25 or dense; `clip_model` overrides the dense index's
    model path), or of a published LAION knn index folder (retrieval/laion.py; `clip_model` required)."""
    folder = pathlib.Path(index).expanduser().absolute()
    from mvrag_jax.retrieval import laion
    if not (folder / MANIFEST_FILE).is_file() and laion.is_laion_index(folder):
        if clip_model is None:
            raise RetrievalError(f"{folder} is a LAION (clip-retrieval) index; pass --clip_model with the CLIP model "
                                 "its embeddings were made with, as a transformers CLIPModel folder")
        return laion.LaionRetriever(folder, clip_model)
    index, manifest = read_manifest(index)
    if manifest["kind"] == "bm25":
        if clip_model is not None:
            raise RetrievalError(f"index {index} is a BM25 index; --clip_model only applies to dense indexes")
        from mvrag_jax.retrieval.bm25 import BM25Retriever, Shard
        folders = [index / s for s in manifest["shards"]] if "shards" in manifest else [index]
        shards = []
        for folder in folders:
            folder, shard_manifest = (index, manifest) if folder == index else read_manifest(folder)
            shards.append(Shard.open(folder, shard_manifest, _root(folder, shard_manifest), RECORDS_FILE))
        return BM25Retriever(index, shards)
    from mvrag_jax.retrieval.dense import DenseRetriever
    records = list(RecordFile(index / RECORDS_FILE))
    return DenseRetriever(index, manifest, _root(index, manifest), records, clip_model)


def _root(index: pathlib.Path, manifest: dict[str, Any]) -> pathlib.Path:
    root = pathlib.Path(manifest["root"])
    if not root.is_dir():
        raise RetrievalError(f"index {index} reads images from {root}, which no longer exists; move the collection "
                             "back or rebuild the index from its new place")
    return root
