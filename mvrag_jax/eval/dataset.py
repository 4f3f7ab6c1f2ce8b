"""Evaluation prompts: the conditioning (retrieved) images and the held-out reference images of each prompt.

`--dataset ood_eval` reads the built `ood_eval` tfds dataset (data_pipelines/ood_eval.py; build it once with
`mvrag data build --datasets ood_eval --config.ood_eval.manual_dir DIR`); `--dataset DIR` reads a folder in that
builder's manual layout directly:

    DIR/<prompt_id>/prompt.txt        the text prompt
    DIR/<prompt_id>/retrieved/<img>   images the model is conditioned on
    DIR/<prompt_id>/reference/<img>   optional held-out images the views are scored against
    DIR/<prompt_id>/masks/<stem>.png  optional object mask of image <stem>.* (white object on black, or alpha)

Held-out references are never also conditioning images. When a prompt has a non-empty reference/, the split is the
folders. Otherwise the retrieved images, in file-name order, are split deterministically: positions 0, 2, 4, ...
condition the model and positions 1, 3, 5, ... are the references (so both halves sample the whole set). A prompt
with no reference/ and fewer than 2 images cannot be split and is skipped with that reason.

References with a mask are scored segmented, as the paper's C.3 scores Grounded-SAM object views: cut out onto the
background grey the generated views also have (data_pipelines/records.py `segment`). Without masks a reference keeps
its photo's background, so CLIP, DINOv2 and IR similarities also measure how alike the backgrounds are (a grey
studio backdrop against a street): lower, and not comparable with Table 1. The report counts the segmented
references (`references_segmented`).
"""

import dataclasses
import os
import pathlib

import numpy as np

from data_pipelines import ood_eval, records
from mvrag_jax.errors import PathNotFoundError, UsageError

SPLIT_FOLDERS = "reference/ folder"
SPLIT_ALTERNATE = "alternate: even positions condition, odd positions are references"


@dataclasses.dataclass(frozen=True)
class EvalPrompt:
    prompt_id: str
    prompt: str
    retrieved: tuple[np.ndarray, ...]   # uint8 [h, w, 3]: what the model is conditioned on
    reference: tuple[np.ndarray, ...]   # uint8 [h, w, 3]: held out, scored against
    split: str                          # SPLIT_FOLDERS or SPLIT_ALTERNATE
    segmented: int = 0                  # how many of `reference` were cut out by their masks


@dataclasses.dataclass(frozen=True)
class EvalDataset:
    name: str
    prompts: tuple[EvalPrompt, ...]
    skipped: tuple[dict, ...]           # {"item": prompt_id, "reason": ...}


def split_prompt(prompt_id: str, prompt: str, retrieved: list[np.ndarray], reference: list[np.ndarray],
                 retrieved_masks: list | None = None, reference_masks: list | None = None,
                 background: int = 127) -> EvalPrompt:
    """Apply the module's split rule, then cut out each reference that has a mask (None: none); raises
    ValueError when the prompt cannot be split."""
    retrieved_masks = retrieved_masks or [None] * len(retrieved)
    reference_masks = reference_masks or [None] * len(reference)
    if reference:
        kept, held, masks, split = retrieved, reference, reference_masks, SPLIT_FOLDERS
    elif len(retrieved) < 2:
        raise UsageError(f"no reference/ images and only {len(retrieved)} retrieved image(s); the alternate split "
                         "needs at least 2")
    else:
        kept, held, masks, split = retrieved[0::2], retrieved[1::2], retrieved_masks[1::2], SPLIT_ALTERNATE
    held = [image if mask is None else records.segment(image, mask, background) for image, mask in zip(held, masks)]
    return EvalPrompt(prompt_id, prompt, tuple(kept), tuple(held), split,
                      segmented=sum(mask is not None for mask in masks))


def _from_records(name: str, raw: list[dict], skipped: list[dict], background: int) -> EvalDataset:
    prompts = []
    for record in raw:
        try:
            prompts.append(split_prompt(record["prompt_id"], record["prompt"], record["retrieved"],
                                        record["reference"], record.get("retrieved_masks"),
                                        record.get("reference_masks"), background))
        except ValueError as e:
            skipped.append({"item": record["prompt_id"], "reason": str(e)})
    if not prompts:
        raise UsageError(f"dataset {name} has no usable prompt ({len(skipped)} skipped: "
                         f"{skipped[:3]}); see mvrag_jax/eval/dataset.py for the layout")
    return EvalDataset(name, tuple(prompts), tuple(skipped))


def read_folder(root: str | os.PathLike, background: int = 127) -> EvalDataset:
    """A folder in the ood_eval manual layout, read directly (unreadable prompts are skipped with the reason)."""
    from etils import epath
    root = pathlib.Path(root).expanduser().absolute()
    if not root.is_dir():
        raise PathNotFoundError(f"dataset folder {root} does not exist; pass --dataset ood_eval or a folder laid out "
                                "as <prompt_id>/prompt.txt, retrieved/, reference/")
    raw, skipped = [], []
    for folder in sorted(p for p in root.iterdir() if p.is_dir()):
        try:
            record = ood_eval.load_prompt(epath.Path(folder), background)
        except ood_eval.BadPromptError as e:
            skipped.append({"item": folder.name, "reason": str(e)})
            continue
        raw.append({**record, **{key: [records.decode_image(data, background) for data in record[key]]
                                 for key in ("retrieved", "reference")},
                    **{key: [records.decode_mask(data) if data else None for data in record[key]]
                       for key in ("retrieved_masks", "reference_masks")}})
    return _from_records(str(root), raw, skipped, background)


def read_built(name: str = "ood_eval") -> EvalDataset:
    """The built tfds `ood_eval` dataset of configs/data.py's data_dir."""
    from configs import data as data_config
    from data_pipelines import build
    builder = build.prepare(data_config.get_config(), "ood_eval")
    skipped = [dict(item) for item in builder.info.metadata.get("skipped", [])]
    return _from_records(name, ood_eval.read_prompts(builder), skipped, builder.builder_config.background)


def load_dataset(dataset: str) -> EvalDataset:
    """`ood_eval` (the built tfds dataset) or a folder in its manual layout."""
    return read_built() if dataset == "ood_eval" else read_folder(dataset)
