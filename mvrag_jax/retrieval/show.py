"""`mvrag retrieve`: run one retrieval, list the hits and optionally copy the images out in rank order."""

import pathlib
import shutil

from mvrag_jax.retrieval.base import RetrievalError, RetrievedImage


def format_hits(hits: list[RetrievedImage]) -> str:
    """One line per hit: rank, score, path, caption (tab-separated, best first)."""
    lines = ["rank\tscore\tpath\tcaption"]
    for rank, hit in enumerate(hits):
        score = "-" if hit.score is None else f"{hit.score:.4f}"
        lines.append(f"{rank}\t{score}\t{hit.path}\t{'' if hit.caption is None else hit.caption}")
    return "\n".join(lines)


def copy_hits(hits: list[RetrievedImage], out: str | pathlib.Path) -> list[pathlib.Path]:
    """Copy the hit files to `out` as 00_<name>, 01_<name>, ... so a file browser shows them in rank order."""
    out = pathlib.Path(out).expanduser().absolute()
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise RetrievalError(f"--out {out} exists and is not an empty folder; choose a new folder so earlier hits "
                             "are not mixed with these")
    out.mkdir(parents=True, exist_ok=True)
    width = max(2, len(str(len(hits) - 1)))
    copied = []
    for rank, hit in enumerate(hits):
        target = out / f"{rank:0{width}d}_{pathlib.Path(hit.path).name}"
        shutil.copyfile(hit.path, target)
        copied.append(target)
    return copied


def show_hits(prompt: str, k: int, *, folder: str | None = None, index: str | None = None,
              clip_model: str | None = None, out: str | None = None) -> str:
    """Retrieve k images for `prompt` from a folder or an index; returns the hit listing (and copies to `out`)."""
    from mvrag_jax.retrieval import open_retriever
    hits = open_retriever(folder=folder, index=index, clip_model=clip_model).retrieve(prompt, k)
    listing = format_hits(hits)
    if out is not None:
        listing += f"\ncopied {len(copy_hits(hits, out))} images to {pathlib.Path(out).expanduser().absolute()}"
    return listing
