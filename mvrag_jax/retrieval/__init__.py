"""Retrieval for MV-RAG inference: prompt -> k reference images (uint8 RGB) for the pipeline.

    retriever = open_retriever(folder="assets/car")            # the official "simple" retriever
    retriever = open_retriever(index="idx/bm25")               # BM25 over captions (the paper's Pyserini settings)
    retriever = open_retriever(index="idx/dense")              # CLIP text -> image similarity (our Flax towers)
    hits = retriever.retrieve("a red car", k=4)                # [RetrievedImage(path, image, score, caption)]

Indexes are built once from a captioned collection (collection.py) with `build_index` / `mvrag index`.
A retriever raises EmptyRetrievalError rather than returning no image; the caller picks text-only or an error.
"""

from mvrag_jax.retrieval.base import EmptyRetrievalError, RetrievalError, RetrievedImage, Retriever
from mvrag_jax.retrieval.collection import CollectionError, read_collection, write_collection
from mvrag_jax.retrieval.folder import FolderRetriever
from mvrag_jax.retrieval.index import KINDS, build_index, open_index
from mvrag_jax.retrieval.show import copy_hits, format_hits, show_hits


def open_retriever(*, folder: str | None = None, index: str | None = None,
                   clip_model: str | None = None) -> Retriever:
    """A retriever over a folder of images or a built index (exactly one of them). `clip_model` overrides the CLIP
    model a dense index was built with (e.g. after moving it)."""
    if (folder is None) == (index is None):
        raise RetrievalError("pass exactly one of --folder (a folder of images) or --index (from `mvrag index`), "
                             f"got folder={folder!r} index={index!r}")
    if folder is not None:
        if clip_model is not None:
            raise RetrievalError("--clip_model only applies to a dense --index; a folder is returned as it is")
        return FolderRetriever(folder)
    return open_index(index, clip_model=clip_model)


__all__ = ["CollectionError", "EmptyRetrievalError", "FolderRetriever", "KINDS", "RetrievalError", "RetrievedImage",
           "Retriever", "build_index", "copy_hits", "format_hits", "open_index", "open_retriever", "read_collection",
           "show_hits", "write_collection"]
