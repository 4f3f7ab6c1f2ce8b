"""Text-image alignment of generated views with their prompt (IND-Eval, the paper's Table 3: CLIP and SigLIP), and
the text/image embedders the retriever study (eval/retrievers.py) shares.

Per view: s = 100 * w * max(cos(text, image), 0) with w = 2.5, CLIPScore's scale (Hessel et al. 2021), averaged over
an object's views; the raw cosine x 100 is kept beside it (`*_cos`). The paper gives no formula; its Table 3 figures
(CLIP 64.48, SigLIP 35.34) sit where CLIPScore's scale puts typical matching pairs (raw CLIP cosines ~0.26-0.3,
SigLIP ~0.12-0.15), not where raw cosines x 100 would, so the scaled score is the one tabulated.

* CLIP: a transformers CLIPModel folder (`--clip_model`), our towers through retrieval/dense.py.
* SigLIP: `--siglip DIR`, a transformers SiglipModel folder (config.json, model.safetensors, preprocessor_config.json
  and its tokenizer), run by models/siglip.py. Prompts are padded to max_length (SigLIP's training input) with the
  folder's tokenizer (transformers AutoTokenizer; the released one is sentencepiece, so it needs the `sentencepiece`
  package where transformers does).
"""

import dataclasses
import json
import pathlib
from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from mvrag_jax.convert.keys import state_dict_to_params
from mvrag_jax.inputs import images as image_ops
from mvrag_jax.inputs.release import read_safetensors_folder
from mvrag_jax.models import siglip
from mvrag_jax.errors import PathNotFoundError, UsageError

CLIPSCORE_W = 2.5
BATCH = 16


def _unit(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, np.float64)
    return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)


def clipscore(text: np.ndarray, images: np.ndarray) -> tuple[float, float]:
    """(CLIPScore-scaled mean, raw cosine mean x 100) of one text embedding [d] against image embeddings [n, d]."""
    cos = _unit(images) @ _unit(text)
    return float(100 * CLIPSCORE_W * np.maximum(cos, 0).mean()), float(100 * cos.mean())


@dataclasses.dataclass(frozen=True)
class Siglip:
    config: siglip.SiglipConfig
    params: Any
    processor: image_ops.CLIPImageProcessorConfig
    tokenizer: Any

    def text(self, prompts: Sequence[str]) -> np.ndarray:
        length = self.config.text.max_position_embeddings
        ids = np.asarray(self.tokenizer(list(prompts), padding="max_length", max_length=length, truncation=True)
                         ["input_ids"], np.int32)
        return np.concatenate([np.asarray(_text(self.config, self.params, jnp.asarray(ids[s:s + BATCH])))
                               for s in range(0, len(ids), BATCH)])

    def images(self, pictures: Sequence[np.ndarray]) -> np.ndarray:
        pixels = image_ops.clip_preprocess(list(pictures), self.processor)
        out = []
        for s in range(0, len(pixels), BATCH):
            chunk = pixels[s:s + BATCH]
            padded = np.concatenate([chunk, np.zeros((BATCH - len(chunk),) + chunk.shape[1:], chunk.dtype)])
            out.append(np.asarray(_image(self.config, self.params, jnp.asarray(padded)))[:len(chunk)])
        return np.concatenate(out)


@jax.jit
def _text(config, params, ids):
    return siglip.text_embeds(config, params, ids)


@jax.jit
def _image(config, params, pixels):
    return siglip.image_embeds(config, params, pixels)


def load_siglip(folder: str | pathlib.Path) -> Siglip:
    folder = pathlib.Path(folder).expanduser().absolute()
    config_path = folder / "config.json"
    if not config_path.is_file():
        raise PathNotFoundError(f"--siglip {folder} has no config.json; pass a transformers SiglipModel folder "
                                "(save_pretrained with safe_serialization=True)")
    values = json.loads(config_path.read_text())
    if values.get("model_type") not in (None, "siglip"):
        raise UsageError(f"{config_path} is a {values.get('model_type')!r} model; --siglip needs a SiglipModel "
                         "(model_type 'siglip'; SigLIP 2's naflex variants are not supported)")
    config = siglip.SiglipConfig.from_dict(values)
    state_dict = read_safetensors_folder(folder, PathNotFoundError)
    shapes = nn.unbox(jax.eval_shape(siglip.init_params, config, jax.random.key(0)))
    params = state_dict_to_params(state_dict, shapes, component=f"{folder.name} SigLIP",
                                  hint="expected transformers' SiglipModel keys (text_model.*, vision_model.*, "
                                       "logit_scale, logit_bias)")
    prep_path = folder / image_ops.PREPROCESSOR_FILE
    if not prep_path.is_file():
        raise PathNotFoundError(f"{prep_path} is missing; copy the SigLIP release's preprocessor_config.json")
    # SiglipImageProcessor resizes to size exactly and never crops (CLIP's defaults would crop to 224).
    processor = dataclasses.replace(image_ops.CLIPImageProcessorConfig.from_dict(json.loads(prep_path.read_text())),
                                    do_center_crop=False)
    from transformers import AutoTokenizer  # slow import; only text encoding needs it
    return Siglip(config, jax.device_put(params), processor, AutoTokenizer.from_pretrained(str(folder)))


@dataclasses.dataclass(frozen=True)
class ClipDual:
    """A CLIPModel folder as text and image embedders (retrieval/dense.py's towers)."""

    model: Any

    def text(self, prompts: Sequence[str]) -> np.ndarray:
        from mvrag_jax.retrieval.dense import text_features
        return text_features(self.model, list(prompts))

    def images(self, pictures: Sequence[np.ndarray]) -> np.ndarray:
        from mvrag_jax.retrieval.dense import image_features
        return image_features(self.model, image_ops.clip_preprocess(list(pictures), self.model.processor), BATCH)


def load_clip(folder: str | pathlib.Path) -> ClipDual:
    from mvrag_jax.retrieval.dense import load_dual_encoder
    return ClipDual(load_dual_encoder(folder))
