"""The official "simple" retriever: the images of one folder, sorted by file name, whatever the prompt.

Differences from retrievers/local_folder_retriever.py, on purpose: .webp is accepted too, and an unreadable file is
replaced by the next one in name order (the official code returns fewer than k images instead).
"""

import logging
import pathlib

from mvrag_jax.retrieval.base import (IMAGE_SUFFIXES, Candidate, EmptyRetrievalError, RetrievalError, RetrievedImage,
                                     collect)

from mvrag_jax.errors import PathNotFoundError

_LOG = logging.getLogger(__name__)


class FolderRetriever:
    """`FolderRetriever(folder).retrieve(prompt, k)`: the first k readable images of `folder` by name."""

    def __init__(self, folder: str | pathlib.Path):
        self.folder = pathlib.Path(folder).expanduser().absolute()
        if not self.folder.exists():
            raise PathNotFoundError(f"image folder {self.folder} does not exist; pass --folder with the retrieved "
                                    "images of the object")
        if not self.folder.is_dir():
            raise RetrievalError(f"{self.folder} is not a folder; pass the folder that holds the images")
        self.files = []
        for path in sorted(self.folder.iterdir(), key=lambda p: p.name):
            if path.name.startswith(".") or path.is_dir():  # .DS_Store and subfolders are not candidates
                continue
            if path.suffix.lower() in IMAGE_SUFFIXES:
                self.files.append(path)
            else:
                _LOG.warning("skipping %s: not an image file (accepted: %s)", path, ", ".join(IMAGE_SUFFIXES))
        if not self.files:
            raise EmptyRetrievalError(f"{self.folder} holds no image file ({', '.join(IMAGE_SUFFIXES)}); put the "
                                      "object's images there or generate without retrieval")

    def retrieve(self, prompt: str, k: int) -> list[RetrievedImage]:
        del prompt  # the folder IS the retrieval result
        return collect((Candidate(path) for path in self.files), k,
                       empty_message=f"no image in {self.folder} could be read; replace the corrupt files")
