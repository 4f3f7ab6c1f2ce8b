"""Retrieve from a published LAION knn index (the layout clip-retrieval's `clip_back` serves) instead of building one.

    FOLDER/image.index          a FAISS index of the image embeddings (autofaiss; e.g. IVF-PQ, HNSW-quantised)
    FOLDER/text.index           optional, the caption embeddings' index
    FOLDER/metadata/*.parquet   one row per indexed vector: the files sorted by name and concatenated give row i
                                for vector id i (columns such as url, caption, image_path, NSFW, similarity)

This is the layout `clip-retrieval index` (autofaiss over `clip-retrieval inference`'s embeddings/img_emb/*.npy and
embeddings/metadata/*.parquet) writes and clip_back reads: its ParquetMetadataProvider concatenates
sorted(metadata/*.parquet), and load_index opens the index with IO_FLAG_MMAP | IO_FLAG_READ_ONLY. We do the same,
but read only the row group that holds a hit, so metadata of 400M rows costs no memory.

Images: MV-RAG needs the retrieved images, and we never download at run time. LAION's own metadata has only `url`;
download the images once (img2dataset writes `key`-named files) and index or map them so that a column gives each
file's path, `image_path` by default (clip-retrieval inference over local files writes it), relative to
`image_root` or absolute. Queries are embedded by the CLIP model the index was built with (`--clip_model`, a
transformers CLIPModel folder run by our towers, dense.py).
"""

import bisect
import functools
import pathlib
from typing import Any, Sequence

import numpy as np

from mvrag_jax.retrieval import ann
from mvrag_jax.retrieval.base import Candidate, RetrievalError, RetrievedImage, collect
from mvrag_jax.errors import PathNotFoundError

METADATA_FOLDER = "metadata"
MODALITIES = ("image", "text")


def is_laion_index(folder: pathlib.Path) -> bool:
    return any((folder / f"{m}.index").is_file() for m in MODALITIES) and (folder / METADATA_FOLDER).is_dir()


class Metadata:
    """Row i of the concatenated, name-sorted parquet files, read one row group at a time."""

    def __init__(self, folder: pathlib.Path):
        import pyarrow.parquet as pq
        self.files = sorted(folder.glob("*.parquet"))
        if not self.files:
            raise RetrievalError(f"{folder} holds no .parquet files; a LAION index keeps its metadata there")
        self._pq = pq
        self.starts, total = [], 0  # first row of each row group, across files
        self.groups = []  # (file index, row group index)
        for f, path in enumerate(self.files):
            meta = pq.ParquetFile(path).metadata
            for g in range(meta.num_row_groups):
                self.starts.append(total)
                self.groups.append((f, g))
                total += meta.row_group(g).num_rows
        self.num_rows = total
        self.columns = pq.ParquetFile(self.files[0]).schema_arrow.names

    @functools.lru_cache(maxsize=64)
    def _group(self, n: int, columns: tuple[str, ...]):
        f, g = self.groups[n]
        return self._pq.ParquetFile(self.files[f]).read_row_group(g, columns=list(columns)).to_pylist()

    def rows(self, ids: Sequence[int], columns: Sequence[str]) -> list[dict[str, Any]]:
        out = []
        for i in ids:
            if not 0 <= i < self.num_rows:
                raise IndexError(f"row {i} of {self.num_rows}")
            n = bisect.bisect_right(self.starts, i) - 1
            out.append(self._group(n, tuple(columns))[i - self.starts[n]])
        return out


class LaionIndex:
    """A FAISS index (memory-mapped) and its metadata in clip-retrieval's layout."""

    def __init__(self, folder: str | pathlib.Path, modality: str = "image"):
        self.folder = pathlib.Path(folder).expanduser().absolute()
        if modality not in MODALITIES:
            raise RetrievalError(f"modality {modality!r}: a LAION index has {' and '.join(MODALITIES)} indexes")
        path = self.folder / f"{modality}.index"
        if not path.is_file():
            raise PathNotFoundError(f"{path} does not exist; point at a clip-retrieval index folder "
                                    f"({'|'.join(m + '.index' for m in MODALITIES)} + {METADATA_FOLDER}/*.parquet)")
        self.index = ann.read(path)
        self.metadata = Metadata(self.folder / METADATA_FOLDER)
        if self.index.ntotal != self.metadata.num_rows:
            raise RetrievalError(f"{path} holds {self.index.ntotal} vectors but {self.folder / METADATA_FOLDER} "
                                 f"{self.metadata.num_rows} rows; they must come from the same build")

    def search(self, query: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """(inner products, ids) of the k nearest vectors, best first (the index's own nprobe/efSearch)."""
        query = np.asarray(query, np.float32).reshape(1, -1)
        if query.shape[1] != self.index.d:
            raise RetrievalError(f"query width {query.shape[1]} != index width {self.index.d}; embed with the CLIP "
                                 "model the index was built with")
        scores, ids = self.index.search(query, k)
        keep = ids[0] >= 0
        return scores[0][keep], ids[0][keep]


class LaionRetriever:
    """Prompt -> CLIP text features -> the LAION image index -> hits' image files (see the module docstring)."""

    def __init__(self, folder: str | pathlib.Path, clip_model: str, *, image_root: str | None = None,
                 path_column: str = "image_path", caption_column: str = "caption", encoder: Any = None):
        self.index = LaionIndex(folder)
        for column in (path_column,):
            if column not in self.index.metadata.columns:
                raise RetrievalError(
                    f"{self.index.folder / METADATA_FOLDER} has no {column!r} column (it has "
                    f"{', '.join(self.index.metadata.columns)}); download the images once (img2dataset) and add a "
                    "column with each file's path, or pass the column that holds it")
        self.path_column, self.caption_column = path_column, caption_column
        self.image_root = pathlib.Path(image_root or self.index.folder).expanduser().absolute()
        if encoder is None:
            from mvrag_jax.retrieval import dense
            model = dense.load_dual_encoder(clip_model)
            encoder = lambda prompt: dense.normalize(dense.text_features(model, [prompt]))[0]
        self.encode = encoder

    def retrieve(self, prompt: str, k: int) -> list[RetrievedImage]:
        scores, ids = self.index.search(self.encode(prompt), ann.RERANK * k)  # spares for unreadable files
        columns = [self.path_column] + ([self.caption_column] if self.caption_column in self.index.metadata.columns
                                        else [])
        rows = self.index.metadata.rows(ids.tolist(), columns)
        candidates = (Candidate(self.image_root / str(row[self.path_column]), float(score),
                                row.get(self.caption_column)) for score, row in zip(scores, rows))
        return collect(candidates, k, empty_message=f"none of the {len(rows)} nearest images of the LAION index "
                                                    f"{self.index.folder} could be read under {self.image_root}")
