"""`ood_eval`: evaluation prompts with their retrieved (and optional reference) images, like the paper's OOD-Eval
(196 prompts of out-of-domain objects).

Layout of `manual_dir` (one folder per prompt; folder name = prompt id):

    <manual_dir>/<prompt_id>/prompt.txt        one line: the text prompt
    <manual_dir>/<prompt_id>/retrieved/<img>   >= 1 retrieved images (the model's references)
    <manual_dir>/<prompt_id>/reference/<img>   optional held-out images of the object, for metrics
    <manual_dir>/<prompt_id>/masks/<stem>.png  optional object mask of the image <stem>.* in reference/ (or, when
                                               none has that name, retrieved/); white object on black, or a
                                               cut-out's alpha; the image's size

Masks segment the held-out references as the paper's C.3 does (Grounded-SAM object views): a reference with a mask
is scored cut out onto the background grey (mvrag_jax/eval/dataset.py), so the metrics compare the object and not
the photo's background. Conditioning images are never masked (the model sees the retrieved images as retrieved).

Prompts with a missing/empty prompt.txt, no readable retrieved image, unreadable images, or a mask without its image
(or of another size) are skipped and
reported (log + metadata.json "skipped"); a prompt count other than `expected_prompts` is logged, not an error.

    prompts = ood_eval.read_prompts(build.prepare(cfg, "ood_eval"))   # list of dicts with decoded images
"""

import dataclasses

import ml_collections as mlc
import numpy as np
import tensorflow_datasets as tfds
from absl import logging
from etils import epath

from data_pipelines import records
from mvrag_jax.errors import MvragError


class BadPromptError(MvragError, ValueError):
    pass


@dataclasses.dataclass(eq=False)
class OodEvalConfig(tfds.core.BuilderConfig):
    expected_prompts: int = 196
    background: int = 127


def _images(folder: epath.Path, background: int) -> list[tuple[str, bytes, tuple[int, int]]]:
    """(stem, encoded bytes, (h, w)) of each image in folder, in file-name order."""
    if not folder.is_dir():
        return []
    found = []
    for path in records.image_files(folder):
        try:
            data = path.read_bytes()
            shape = records.decode_image(data, background).shape[:2]  # validate at build; the bytes are kept as is
        except records.DECODE_ERRORS as e:
            raise BadPromptError(f"{folder.name}/{path.name} is not a readable image ({type(e).__name__}: {e})") from e
        found.append((path.stem, data, shape))
    return found


def _masks(folder: epath.Path, images: dict[str, list]) -> dict[str, list[bytes]]:
    """Per image list ("retrieved", "reference"), the encoded mask of each image (b"" where it has none)."""
    masks = {}
    for stem, data, _ in _images(folder, 0):
        # reference/ first: references are what a mask segments (retrieved/ ones serve the alternate split)
        owners = [(key, i) for key in ("reference", "retrieved") for i, (s, _, _) in enumerate(images[key])
                  if s == stem]
        if not owners:
            raise BadPromptError(f"masks/{stem}.* has no image {stem}.* in reference/ or retrieved/; name each mask "
                                 "after its image")
        key, i = owners[0]
        shape = records.decode_mask(data).shape
        if shape != images[key][i][2]:
            raise BadPromptError(f"masks/{stem}.* is {shape[1]}x{shape[0]} but {key}/{stem}.* is "
                                 f"{images[key][i][2][1]}x{images[key][i][2][0]}; give the mask the image's size")
        masks[(key, i)] = data
    return {f"{key}_masks": [masks.get((key, i), b"") for i in range(len(found))] for key, found in images.items()}


def load_prompt(folder: epath.Path, background: int) -> dict:
    prompt_file = folder / "prompt.txt"
    try:
        prompt = prompt_file.read_text().strip() if prompt_file.exists() else ""
    except UnicodeDecodeError as e:
        raise BadPromptError(f"prompt.txt is not UTF-8 text ({e})") from e
    if not prompt:
        raise BadPromptError("prompt.txt is missing or empty")
    images = {key: _images(folder / key, background) for key in ("retrieved", "reference")}
    if not images["retrieved"]:
        raise BadPromptError("retrieved/ has no images")
    return {"prompt_id": folder.name, "prompt": prompt, **{key: [data for _, data, _ in found]
                                                           for key, found in images.items()},
            **_masks(folder / "masks", images)}


class OodEval(tfds.core.GeneratorBasedBuilder, skip_registration=True):
    """Evaluation prompts from manual_dir; see the module docstring for the layout."""

    VERSION = tfds.core.Version("1.1.0")
    RELEASE_NOTES = {"1.0.0": "Initial release.", "1.1.0": "Object masks (masks/): retrieved_masks, reference_masks."}
    BUILDER_CONFIGS = [OodEvalConfig(name="default")]
    MANUAL_DOWNLOAD_INSTRUCTIONS = __doc__
    url_infos = None  # nothing is downloaded; skips tfds' checksum lookup, which breaks on namespace packages

    def _info(self) -> tfds.core.DatasetInfo:
        features = tfds.features.FeaturesDict({
            "prompt_id": tfds.features.Text(), "prompt": tfds.features.Text(),
            "retrieved": records.image_list(), "reference": records.image_list(),
            "retrieved_masks": records.image_list(), "reference_masks": records.image_list()})
        return tfds.core.DatasetInfo(builder=self, features=features, metadata=tfds.core.MetadataDict(),
                                     disable_shuffling=True)

    def _split_generators(self, dl_manager):
        return {"test": self._generate_examples(epath.Path(dl_manager.manual_dir))}

    def _generate_examples(self, root: epath.Path):
        skipped = self.info.metadata.setdefault("skipped", [])
        kept = 0
        for key, folder in enumerate(sorted(p for p in root.iterdir() if p.is_dir())):
            try:
                record = load_prompt(folder, self.builder_config.background)
            except BadPromptError as e:
                records.report_skipped(skipped, folder.name, str(e))
                continue
            kept += 1
            yield key, record
        if kept == 0:
            raise BadPromptError(f"no valid prompt folders in {root}; see data_pipelines/ood_eval.py for the layout")
        if kept != self.builder_config.expected_prompts:
            logging.warning("ood_eval: %d prompts, expected %d (the paper's OOD-Eval)", kept,
                            self.builder_config.expected_prompts)


def make_builder(cfg: mlc.ConfigDict, data_dir: str) -> OodEval:
    config = OodEvalConfig(name=f"bg{cfg.background_level}", expected_prompts=cfg.ood_eval.expected_prompts,
                           background=cfg.background_level)
    return OodEval(data_dir=data_dir, config=config)


def read_prompts(builder: OodEval, split: str = "test") -> list[dict]:
    """All prompts with decoded uint8 images: [{prompt_id, prompt, retrieved: [[h, w, 3]], reference: [...],
    retrieved_masks: [float32 [h, w] or None per image], reference_masks: [...]}].

    Transparent pixels are composited over the background the builder was made with (cfg.background_level)."""
    background = builder.builder_config.background
    source = builder.as_data_source(split=split)
    out = []
    for i in range(len(source)):
        record = source[i]
        out.append({"prompt_id": records.as_text(record["prompt_id"]), "prompt": records.as_text(record["prompt"]),
                    **{key: [records.decode_image(bytes(x), background) for x in np.asarray(record[key]).tolist()]
                       for key in ("retrieved", "reference")},
                    **{key: [records.decode_mask(bytes(x)) if bytes(x) else None
                             for x in np.asarray(record[key]).tolist()]
                       for key in ("retrieved_masks", "reference_masks")}})
    return out
