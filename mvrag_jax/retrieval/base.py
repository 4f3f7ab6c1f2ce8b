"""What every retriever returns, its errors, and the one way retrieved image files are read.

A retriever maps (prompt, k) to at most k `RetrievedImage`s, best first. It never returns an empty list: when nothing
usable is found it raises `EmptyRetrievalError`, and the caller decides (generate: text-only with a notice, or an error
with --require-retrieval). Unreadable or missing image files are skipped with one warning each and the next candidate
takes their place, so a few bad files never cost the caller an image while enough good ones remain.
"""

import dataclasses
import logging
import pathlib
import struct
import zlib
from typing import Iterable, Protocol

import numpy as np
from PIL import Image

from mvrag_jax.errors import MvragError

_LOG = logging.getLogger(__name__)

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp")
# Everything Pillow raises on a truncated, corrupt or hostile file (the list data_pipelines/records.py uses too).
DECODE_ERRORS = (OSError, ValueError, SyntaxError, EOFError, zlib.error, struct.error, Image.DecompressionBombError)


class RetrievalError(MvragError, ValueError):
    """Retrieval cannot run as asked (bad k, bad collection, bad index); the message names the fix."""


class EmptyRetrievalError(RetrievalError):
    """No usable image was found for a prompt (empty folder, no matching caption, every hit unreadable)."""


@dataclasses.dataclass(frozen=True)
class RetrievedImage:
    path: str            # absolute path of the source file
    image: np.ndarray    # uint8 [h, w, 3] RGB
    score: float | None  # retriever score (BM25 or cosine similarity); None for a folder
    caption: str | None  # the collection's caption; None for a folder


class Retriever(Protocol):
    def retrieve(self, prompt: str, k: int) -> list[RetrievedImage]:
        """At most k images for `prompt`, best first; raises EmptyRetrievalError instead of returning []."""
        ...


@dataclasses.dataclass(frozen=True)
class Candidate:
    """A ranked entry before its file is read."""

    path: pathlib.Path
    score: float | None = None
    caption: str | None = None


def check_k(k: int) -> int:
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
        raise RetrievalError(f"k={k!r} images requested; pass a positive integer (the paper retrieves k=4)")
    return int(k)


def read_image(path: pathlib.Path) -> np.ndarray | None:
    """The file as uint8 [h, w, 3] RGB (the official `Image.open(p).convert("RGB")`; a GIF gives its first frame),
    or None after one warning when it is missing or cannot be decoded."""
    try:
        with Image.open(path) as image:
            return np.asarray(image.convert("RGB"))
    except FileNotFoundError:
        _LOG.warning("skipping %s: the file does not exist (moved or deleted since indexing?)", path)
    except DECODE_ERRORS as e:
        _LOG.warning("skipping %s: not a readable image (%s: %s)", path, type(e).__name__, e)
    return None


def collect(candidates: Iterable[Candidate], k: int, *, empty_message: str) -> list[RetrievedImage]:
    """Read candidates in rank order until k images decode; unreadable ones are skipped (warned by read_image).
    Raises EmptyRetrievalError(empty_message) when none does; warns when fewer than k did."""
    k = check_k(k)
    hits, skipped = [], 0
    for candidate in candidates:
        image = read_image(candidate.path)
        if image is None:
            skipped += 1
            continue
        hits.append(RetrievedImage(str(candidate.path.absolute()), image, candidate.score, candidate.caption))
        if len(hits) == k:
            break
    if not hits:
        raise EmptyRetrievalError(empty_message + (f" ({skipped} candidate files unreadable)" if skipped else ""))
    if len(hits) < k:
        _LOG.warning("only %d of the %d requested images were found", len(hits), k)
    return hits
