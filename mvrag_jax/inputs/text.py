"""Prompts -> token ids for the CLIP text encoder, with the official MV-RAG prompt rule (pipeline `_encode_prompt`).

Host-side only (strings and numpy): the tokenizer is transformers' `CLIPTokenizer` read from the release's
tokenizer/ folder, so vocabulary, merges, lowercasing and the pad token ('!' for SD2.1) are the release's own.
"""

import logging
import os
from typing import TYPE_CHECKING, Sequence

import numpy as np

from mvrag_jax.errors import MvragError

if TYPE_CHECKING:
    from transformers import CLIPTokenizer

    from mvrag_jax.inputs.release import Release

_LOG = logging.getLogger(__name__)

PROMPT_SUFFIX = ", 3d asset"  # appended to every positive prompt by the official pipeline
# transformers' "no limit" sentinel for model_max_length is ~1e30; any real CLIP tokenizer states 77.
_UNSET_MAX_LENGTH = 10 ** 6


class PromptError(MvragError, ValueError):
    """A prompt, negative prompt or tokenizer cannot be used as the official pipeline would."""


def process_prompt(prompt: str) -> str:
    """The official rule: drop ONE trailing '.', then append ', 3d asset' ('A red car.' -> 'A red car, 3d asset')."""
    if not isinstance(prompt, str):
        raise PromptError(f"prompt must be a string, got {type(prompt).__name__} {prompt!r}")
    return (prompt[:-1] if prompt.endswith(".") else prompt) + PROMPT_SUFFIX


def load_tokenizer(release: "Release") -> "CLIPTokenizer":
    """The release's CLIPTokenizer (tokenizer/ folder: vocab.json, merges.txt, tokenizer_config.json)."""
    return tokenizer_from_folder(release.folder("tokenizer"))


def tokenizer_from_folder(folder: "str | os.PathLike") -> "CLIPTokenizer":
    """A CLIPTokenizer from a folder of vocab.json, merges.txt and tokenizer_config.json (e.g. a CLIP model's)."""
    from transformers import CLIPTokenizer  # transformers is slow to import; only text encoding needs it

    tokenizer = CLIPTokenizer.from_pretrained(str(folder))
    if tokenizer.model_max_length > _UNSET_MAX_LENGTH:
        raise PromptError(f"{folder}/tokenizer_config.json sets no model_max_length; add \"model_max_length\": 77 "
                          "(the CLIP text encoder's positions) as in the official release")
    return tokenizer


def tokenize(tokenizer: "CLIPTokenizer", texts: Sequence[str], max_length: int | None = None) -> np.ndarray:
    """Token ids [n, max_length] int32: [BOS, ..., EOS, pad...], padded to max_length and truncated, exactly as the
    pipeline calls the tokenizer. max_length defaults to tokenizer.model_max_length (77). Truncation is logged with
    the removed text, as the official pipeline does."""
    texts = list(texts)
    max_length = tokenizer.model_max_length if max_length is None else max_length
    ids = tokenizer(texts, padding="max_length", max_length=max_length, truncation=True).input_ids
    for text, full in zip(texts, tokenizer(texts).input_ids):
        if len(full) > max_length:
            removed = tokenizer.decode(full[max_length - 1:-1])
            _LOG.warning("prompt truncated to %d tokens (CLIP's limit); removed: %r (prompt %r)",
                         max_length, removed, text)
    return np.asarray(ids, dtype=np.int32)


def prompt_input_ids(tokenizer: "CLIPTokenizer", prompt: str | Sequence[str],
                     negative_prompt: str | Sequence[str] | None = None) -> np.ndarray:
    """Token ids [2 * n, 77] in CFG order: n negative prompts, then n processed positive prompts.

    Positive prompts get `process_prompt`; negative prompts are used verbatim (default '' per prompt, NOT suffixed),
    as the official `_encode_prompt`.
    """
    prompts = [prompt] if isinstance(prompt, str) else list(prompt)
    if not prompts:
        raise PromptError("no prompt given; pass a string or a non-empty list of strings")
    if negative_prompt is None:
        negatives = [""] * len(prompts)
    elif isinstance(negative_prompt, str):
        negatives = [negative_prompt] * len(prompts)
    else:
        negatives = list(negative_prompt)
    if len(negatives) != len(prompts):
        raise PromptError(f"{len(negatives)} negative prompts for {len(prompts)} prompts; pass one negative prompt "
                          "per prompt, a single string, or None")
    positives = [process_prompt(p) for p in prompts]
    return np.concatenate([tokenize(tokenizer, negatives), tokenize(tokenizer, positives)])  # [2n, 77]
