"""Dense text -> image retrieval with a full CLIP model, run by our Flax CLIP towers.

The user supplies a transformers `CLIPModel` folder: config.json (model_type "clip", `text_config`, `vision_config`,
`projection_dim`), *.safetensors with `text_model.*`, `vision_model.*`, `text_projection.weight` and
`visual_projection.weight`, the tokenizer files (vocab.json, merges.txt, tokenizer_config.json) and, optionally,
preprocessor_config.json (without it: resize + center-crop to the vision tower's image_size, OpenAI mean/std).
Embeddings follow transformers' CLIPModel exactly:
  text  = text_projection(final_layer_norm(last hidden)[eos position])    get_text_features
  image = visual_projection(post_layernorm(last hidden[CLS]))              get_image_features
where the eos position is transformers' rule: the first `eos_token_id` of each row, or, for configs that still say
eos_token_id == 2 (saved before transformers PR #24773), the position of the largest token id.
Retrieval ranks images by cosine similarity (both embeddings L2-normalised).

Shapes are static (prompts padded to the tokenizer length, image batches padded to `batch_size`), so each tower
compiles once per process.
"""

import dataclasses
import json
import logging
import pathlib
import time
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from tqdm import tqdm

from mvrag_jax.inputs import images as image_ops
from mvrag_jax.inputs import text as text_ops
from mvrag_jax.convert.components import COMPONENTS_BY_NAME, abstract_params
from mvrag_jax.convert.keys import state_dict_to_params
from mvrag_jax.models import clip
from mvrag_jax.inputs.release import read_safetensors_folder
from mvrag_jax.retrieval import ann
from mvrag_jax.retrieval.base import Candidate, RetrievalError, RetrievedImage, collect, read_image
from mvrag_jax.retrieval.collection import CollectionError, CollectionRecord
from mvrag_jax.errors import PathNotFoundError

_LOG = logging.getLogger(__name__)

EMBEDDINGS_FILE = "embeddings.npy"
LEGACY_EOS_TOKEN_ID = 2          # transformers: "eos_token_id was incorrect before PR #24773"
DEFAULT_EOS_TOKEN_ID = 49407     # transformers' CLIPTextConfig default
IMAGE_BATCH = 16


class CLIPModelError(RetrievalError):
    """The --clip_model folder is not a usable transformers CLIPModel; the message names the missing piece."""


@dataclasses.dataclass(frozen=True)
class DualEncoder:
    """A loaded CLIPModel: configs, float32 params {text, vision, text_projection, visual_projection}, tokenizer."""

    folder: pathlib.Path
    text_config: clip.CLIPTextConfig
    vision_config: clip.CLIPVisionConfig
    params: dict[str, Any]
    eos_token_id: int
    tokenizer: Any
    processor: image_ops.CLIPImageProcessorConfig

    @property
    def projection_dim(self) -> int:
        return int(self.params["text_projection"].shape[1])


def _read_config(folder: pathlib.Path) -> dict[str, Any]:
    path = folder / "config.json"
    if not path.is_file():
        raise CLIPModelError(f"{folder} has no config.json; pass --clip_model with a transformers CLIPModel folder "
                             "(saved with CLIPModel.save_pretrained)")
    try:
        config = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise CLIPModelError(f"{path} is not valid JSON ({e}); restore it from the model's source") from e
    if "text_config" not in config or "vision_config" not in config:
        raise CLIPModelError(f"{path} has no text_config/vision_config (model_type {config.get('model_type')!r}); "
                             "dense retrieval needs a full CLIPModel with both towers and both projections")
    return config


def _split_weights(folder: pathlib.Path) -> tuple[dict, dict, np.ndarray, np.ndarray]:
    """(text state dict, vision state dict, text_projection [hidden, proj], visual_projection [hidden, proj])."""
    tensors = read_safetensors_folder(folder, CLIPModelError)
    missing = [k for k in ("text_projection.weight", "visual_projection.weight") if k not in tensors]
    if missing:
        raise CLIPModelError(f"{folder} weights lack {missing}; dense retrieval needs a CLIPModel with projections, "
                             "not a CLIPTextModel/CLIPVisionModel (e.g. the MV-RAG release's towers)")
    text = {k: v for k, v in tensors.items() if k.startswith(clip.TEXT_PREFIX)}
    vision = {k: v for k, v in tensors.items() if k.startswith(clip.VISION_PREFIX)}
    # torch Linear weights are [out, in]; our projections multiply from the right, so store [in, out].
    project = lambda key: np.asarray(tensors[key], np.float32).T
    return text, vision, project("text_projection.weight"), project("visual_projection.weight")


def load_dual_encoder(folder: str | pathlib.Path) -> DualEncoder:
    """Read a transformers CLIPModel folder into our towers (key mismatches raise CheckpointKeyError)."""
    folder = pathlib.Path(folder).expanduser().absolute()
    if not folder.is_dir():
        raise PathNotFoundError(f"CLIP model folder {folder} does not exist; pass --clip_model with a transformers "
                                "CLIPModel folder")
    config = _read_config(folder)
    text_config = clip.CLIPTextConfig.from_dict(config["text_config"])
    vision_config = clip.CLIPVisionConfig.from_dict(config["vision_config"], str(folder / "config.json"))
    text_sd, vision_sd, text_projection, visual_projection = _split_weights(folder)
    params = {}
    for name, config_, state_dict in (("clip_text", text_config, text_sd), ("clip_vision", vision_config, vision_sd)):
        component = COMPONENTS_BY_NAME[name]
        params[name] = state_dict_to_params(component.normalize_keys(state_dict), abstract_params(component, config_),
                                            component=f"{folder} {name}")
    for name, projection, width in (("text_projection", text_projection, text_config.hidden_size),
                                    ("visual_projection", visual_projection, vision_config.hidden_size)):
        if projection.shape[0] != width or projection.shape[1] != text_projection.shape[1]:
            raise CLIPModelError(f"{folder}: {name}.weight has shape {projection.shape[::-1]}, expected "
                                 f"[projection_dim, {width}] with one projection_dim for both towers; the weights do "
                                 "not match config.json")
    eos_token_id = int(config["text_config"].get("eos_token_id", DEFAULT_EOS_TOKEN_ID))
    tokenizer = _tokenizer(folder, eos_token_id)
    return DualEncoder(folder, text_config, vision_config,
                       {"text": params["clip_text"], "vision": params["clip_vision"],
                        "text_projection": text_projection, "visual_projection": visual_projection},
                       eos_token_id, tokenizer, _processor(folder, vision_config))


def _tokenizer(folder: pathlib.Path, eos_token_id: int) -> Any:
    if not (folder / "vocab.json").is_file():
        raise CLIPModelError(f"{folder} has no vocab.json; copy the CLIP model's tokenizer files (vocab.json, "
                             "merges.txt, tokenizer_config.json) into it")
    tokenizer = text_ops.tokenizer_from_folder(folder)
    if eos_token_id != LEGACY_EOS_TOKEN_ID and tokenizer.eos_token_id != eos_token_id:
        # Pooling would silently read position 0 (transformers' argmax of an all-false row): refuse instead.
        raise CLIPModelError(f"{folder}: config text_config.eos_token_id={eos_token_id} but the tokenizer's EOS id "
                             f"is {tokenizer.eos_token_id}; the tokenizer does not belong to this model")
    return tokenizer


def _processor(folder: pathlib.Path, vision_config: clip.CLIPVisionConfig) -> image_ops.CLIPImageProcessorConfig:
    path = folder / image_ops.PREPROCESSOR_FILE
    if path.is_file():
        return image_ops.CLIPImageProcessorConfig.from_dict(json.loads(path.read_text()))
    _LOG.info("%s has no %s; resizing and center-cropping to the vision tower's %d px with OpenAI CLIP mean/std",
              folder, image_ops.PREPROCESSOR_FILE, vision_config.image_size)
    size = vision_config.image_size
    return image_ops.CLIPImageProcessorConfig(shortest_edge=size, crop_hw=(size, size))


def eos_positions(input_ids: np.ndarray, eos_token_id: int) -> np.ndarray:
    """transformers' pooling position per row of input_ids [b, l] -> [b]."""
    input_ids = np.asarray(input_ids)
    if eos_token_id == LEGACY_EOS_TOKEN_ID:
        return input_ids.argmax(-1)
    return (input_ids == eos_token_id).argmax(-1)  # first EOS (the pad token may equal EOS)


@jax.jit
def _text_features(config: clip.CLIPTextConfig, params: Any, projection: jax.Array, input_ids: jax.Array,
                   positions: jax.Array) -> jax.Array:
    hidden = clip.encode_text(config, params, input_ids)  # [b, l, hidden]
    pooled = hidden[jnp.arange(hidden.shape[0]), positions]  # [b, hidden]
    return pooled @ projection  # [b, projection_dim]


@jax.jit
def _image_features(config: clip.CLIPVisionConfig, params: Any, projection: jax.Array,
                    pixel_values: jax.Array) -> jax.Array:
    pooled = clip.encode_images(config, params, pixel_values).pooler_output  # [b, hidden]
    return pooled @ projection  # [b, projection_dim]


def text_features(model: DualEncoder, prompts: Sequence[str]) -> np.ndarray:
    """transformers' CLIPModel.get_text_features for prompts -> [n, projection_dim] float32 (not normalised).
    Prompts are padded to one length with no padding mask: the causal mask keeps pads out of the EOS state."""
    length = min(model.tokenizer.model_max_length, model.text_config.max_position_embeddings)
    input_ids = text_ops.tokenize(model.tokenizer, prompts, max_length=length)  # [n, length]
    features = _text_features(model.text_config, model.params["text"], model.params["text_projection"], input_ids,
                              eos_positions(input_ids, model.eos_token_id))
    return np.asarray(features, np.float32)


def image_features(model: DualEncoder, pixel_values: np.ndarray, batch_size: int = IMAGE_BATCH) -> np.ndarray:
    """transformers' CLIPModel.get_image_features for normalised NHWC pixels [n, s, s, 3] -> [n, projection_dim];
    batches are zero-padded to `batch_size` so every call has one shape."""
    out = []
    for start in range(0, len(pixel_values), batch_size):
        batch = pixel_values[start:start + batch_size]
        padded = np.concatenate([batch, np.zeros((batch_size - len(batch),) + batch.shape[1:], batch.dtype)])
        features = _image_features(model.vision_config, model.params["vision"], model.params["visual_projection"],
                                   padded)
        out.append(np.asarray(features, np.float32)[:len(batch)])
    return np.concatenate(out) if out else np.zeros((0, model.projection_dim), np.float32)


def normalize(x: np.ndarray) -> np.ndarray:
    return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)


def write_index(folder: pathlib.Path, root: pathlib.Path, records: Sequence[CollectionRecord], clip_model: str,
                batch_size: int = IMAGE_BATCH, show_progress: bool = True) -> tuple[list[CollectionRecord], dict]:
    """Embed every readable image of `records` (unreadable ones are skipped with a warning) into folder/embeddings.npy;
    returns (the records kept, the manifest block)."""
    model = load_dual_encoder(clip_model)
    kept, embeddings, compile_s, run_s = [], [], 0.0, 0.0
    for start in tqdm(range(0, len(records), batch_size), desc="embedding images", unit="batch",
                      disable=not show_progress):
        chunk = records[start:start + batch_size]
        decoded = [(r, read_image(root / r.image)) for r in chunk]
        decoded = [(r, image) for r, image in decoded if image is not None]
        if not decoded:
            continue
        began = time.perf_counter()
        features = image_features(model, image_ops.clip_preprocess([image for _, image in decoded], model.processor),
                                  batch_size)
        if start == 0:
            compile_s = time.perf_counter() - began  # the first batch includes the one compile
        else:
            run_s += time.perf_counter() - began
        kept.extend(r for r, _ in decoded)
        embeddings.append(normalize(features))
    if not kept:
        raise CollectionError(f"no image of the collection under {root} could be read; dense indexing needs images")
    _LOG.info("embedded %d images: first batch (with compile) %.1f s, the rest %.1f s", len(kept), compile_s, run_s)
    np.save(folder / EMBEDDINGS_FILE, np.concatenate(embeddings).astype(np.float32))
    settings = {"clip_model": str(model.folder), "projection_dim": model.projection_dim,
                "image_size": model.vision_config.image_size}
    if len(kept) >= ann.EXACT_BELOW:  # a full scan per query no longer pays: FAISS IVF-PQ + exact re-ranking
        index = ann.build(np.load(folder / EMBEDDINGS_FILE, mmap_mode="r"))
        ann.save(index, folder / ann.INDEX_FILE)
        settings["ann"] = ann.factory_string(len(kept), model.projection_dim)
    return kept, settings


class DenseRetriever:
    """Top-k images by cosine similarity of CLIP embeddings (prompt vs indexed images)."""

    def __init__(self, index_dir: pathlib.Path, manifest: dict[str, Any], root: pathlib.Path,
                 records: Sequence[CollectionRecord], clip_model: str | None = None):
        self.index_dir, self.root, self.records = index_dir, root, list(records)
        self.model = load_dual_encoder(clip_model or manifest["dense"]["clip_model"])
        self.embeddings = np.load(index_dir / EMBEDDINGS_FILE, mmap_mode="r")  # [n, projection_dim], L2-normalised
        self.searcher = ann.Searcher.open(index_dir) if (index_dir / ann.INDEX_FILE).is_file() else None
        if self.embeddings.shape != (len(self.records), self.model.projection_dim):
            raise RetrievalError(f"index {index_dir} holds embeddings {self.embeddings.shape} for {len(self.records)} "
                                 f"records, but {self.model.folder} projects to {self.model.projection_dim}; use the "
                                 "CLIP model the index was built with, or rebuild it")

    def scores(self, prompt: str) -> np.ndarray:
        """Cosine similarity of every indexed image with `prompt` [n]."""
        return self.embeddings @ normalize(text_features(self.model, [prompt]))[0]

    def _ranked(self, prompt: str, k: int):
        """(score, record index) best first: a full sort, or FAISS's top-k, widened while the caller reads on."""
        if self.searcher is None:
            scores = self.scores(prompt)
            order = np.argsort(-scores, kind="stable")  # ties: image path order (records are sorted by path)
            yield from ((float(scores[i]), int(i)) for i in order)
            return
        query, done, want = normalize(text_features(self.model, [prompt]))[0], 0, k
        while done < len(self.records):
            scores, ids = self.searcher.search(query, want)
            yield from ((float(s), int(i)) for s, i in zip(scores[done:], ids[done:]))
            done, want = len(ids), 2 * want
            if len(ids) < want // 2:  # the index has no more candidates for this query
                return

    def retrieve(self, prompt: str, k: int) -> list[RetrievedImage]:
        candidates = (Candidate(self.root / self.records[i].image, score, self.records[i].caption)
                      for score, i in self._ranked(prompt, k))
        return collect(candidates, k, empty_message=f"no indexed image of {self.index_dir} could be read under "
                                                    f"{self.root}; the images moved: rebuild the index")
