"""The networks that score images, loaded from what the user supplies; a network without weights is absent, never
guessed (its metrics are then reported as missing with the reason).

* CLIP: a transformers CLIPModel folder (`--clip_model`), run by our towers through retrieval/dense.py; the image
  embedding is `get_image_features` (projected CLS).
* DINOv2: `--dinov2` as a `facebook/dinov2-base`-layout folder (config.json, model.safetensors,
  preprocessor_config.json), an official release folder (its facebook/dinov2-base/), or an mvrag checkpoint (its
  dinov2 component); with `--ckpt` and no `--dinov2`, the checkpoint's own. Embedding: L2-normalised CLS, as the
  fusion weight uses it.
* Inception (FID, IS): pytorch-fid's `pt_inception-2015-12-05-6726825d.pth` converted to safetensors once, in an
  environment that has torch (one line):
      python -c "import torch, safetensors.torch as s; s.save_file({k: v.contiguous() for k, v in torch.load(
      'pt_inception-2015-12-05-6726825d.pth', map_location='cpu').items()}, 'pt_inception.safetensors')"
  Every tensor key must map onto models/inception.py (BatchNorm's `num_batches_tracked` counters are dropped, they
  are not weights); a missing or unexpected key raises CheckpointKeyError.
* IR (instance retrieval): `--ir DIR`, Shao & Cui's GUIE model as the paper uses it (eval/ir.py: weights, their
  one-line conversion, and why the 64-d embedding is the one scored).
"""

import dataclasses
import json
import pathlib
from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from mvrag_jax.inputs import images as image_ops
from mvrag_jax.convert import load_model_checkpoint
from mvrag_jax.convert.checkpoint import CONFIG_FILE
from mvrag_jax.convert.components import COMPONENTS_BY_NAME, abstract_params
from mvrag_jax.convert.keys import state_dict_to_params
from mvrag_jax.models import dinov2, inception
from mvrag_jax.inputs.release import COMPONENT_FOLDERS, read_safetensors, read_safetensors_folder
from mvrag_jax.errors import PathNotFoundError, MvragError

BATCH = 16  # images per encoder call; batches are zero-padded to it so each encoder compiles once


class EncoderError(MvragError, ValueError):
    """Weights given for a metric encoder are not usable; the message names the file and the fix."""


@dataclasses.dataclass(frozen=True)
class Encoders:
    """Embedding functions (uint8 HWC images -> [n, d] float32), None where no weights were supplied, with the
    reason."""

    clip: Callable[[Sequence[np.ndarray]], np.ndarray] | None
    dinov2: Callable[[Sequence[np.ndarray]], np.ndarray] | None
    inception: Callable[[Sequence[np.ndarray]], tuple[np.ndarray, np.ndarray]] | None
    missing: dict[str, str]   # encoder name -> why it is absent
    ir: Callable[[Sequence[np.ndarray]], np.ndarray] | None = None


def _batched(fn: Callable[[np.ndarray], Any], pixels: np.ndarray) -> list:
    """fn over zero-padded batches of BATCH rows; returns per-batch outputs trimmed to the real rows."""
    out = []
    for start in range(0, len(pixels), BATCH):
        chunk = pixels[start:start + BATCH]
        padded = np.concatenate([chunk, np.zeros((BATCH - len(chunk),) + chunk.shape[1:], chunk.dtype)])
        out.append(jax.tree.map(lambda x: np.asarray(x, np.float32)[:len(chunk)], fn(padded)))
    return out


# ---- CLIP ------------------------------------------------------------------------------------------------------------
def clip_encoder(folder: str) -> Callable[[Sequence[np.ndarray]], np.ndarray]:
    from mvrag_jax.retrieval.dense import image_features, load_dual_encoder
    model = load_dual_encoder(folder)

    def embed(pictures: Sequence[np.ndarray]) -> np.ndarray:
        return image_features(model, image_ops.clip_preprocess(list(pictures), model.processor), BATCH)
    return embed


# ---- DINOv2 ----------------------------------------------------------------------------------------------------------
def load_dinov2(path: str | pathlib.Path) -> tuple[dinov2.DINOv2Config, Any, image_ops.CLIPImageProcessorConfig]:
    """(config, params, processor) from a dinov2-base folder, a release folder or an mvrag checkpoint."""
    path = pathlib.Path(path).expanduser().absolute()
    if not path.is_dir():
        raise PathNotFoundError(f"DINOv2 folder {path} does not exist; pass --dinov2 with a facebook/dinov2-base "
                                "folder, a release folder or an mvrag checkpoint")
    if (path / CONFIG_FILE).is_file():  # mvrag checkpoint
        configs, params = load_model_checkpoint(path)
        if "dinov2" not in params:
            raise EncoderError(f"checkpoint {path} has no dinov2 component; pass --dinov2 with a dinov2-base folder")
        folder = path / "release_files" / COMPONENT_FOLDERS["dinov2"]
        return configs["dinov2"], params["dinov2"], _dinov2_processor(folder)
    folder = path / COMPONENT_FOLDERS["dinov2"] if (path / "model_index.json").is_file() else path
    config_path = folder / "config.json"
    if not config_path.is_file():
        raise EncoderError(f"{folder} has no config.json; --dinov2 needs a transformers Dinov2Model folder "
                           "(config.json, model.safetensors, preprocessor_config.json)")
    config = dinov2.DINOv2Config.from_hf_config(json.loads(config_path.read_text()), str(config_path))
    state_dict = read_safetensors_folder(folder, EncoderError)
    component = COMPONENTS_BY_NAME["dinov2"]
    params = state_dict_to_params(component.normalize_keys(state_dict), abstract_params(component, config),
                                  component=f"{folder} dinov2", hint=component.hint)
    return config, params, _dinov2_processor(folder)


def _dinov2_processor(folder: pathlib.Path) -> image_ops.CLIPImageProcessorConfig:
    path = folder / image_ops.PREPROCESSOR_FILE
    if not path.is_file():
        raise EncoderError(f"{path} is missing; copy preprocessor_config.json of facebook/dinov2-base into {folder}")
    return image_ops.CLIPImageProcessorConfig.from_dict(json.loads(path.read_text()))


def dinov2_encoder(config: dinov2.DINOv2Config, params: Any, processor: image_ops.CLIPImageProcessorConfig
                   ) -> Callable[[Sequence[np.ndarray]], np.ndarray]:
    params = jax.device_put(params)

    def embed(pictures: Sequence[np.ndarray]) -> np.ndarray:
        pixels = dinov2.preprocess(list(pictures), processor)
        return np.concatenate(_batched(lambda x: dinov2.cls_embeddings(config, params, jnp.asarray(x)), pixels))
    return embed


# ---- Inception -------------------------------------------------------------------------------------------------------
def convert_command(pth: str = "pt_inception-2015-12-05-6726825d.pth", out: str = "pt_inception.safetensors") -> str:
    """The one-line torch command that turns pytorch-fid's .pth into the safetensors file --inception reads."""
    return (f"python -c \"import torch, safetensors.torch as s; s.save_file({{k: v.contiguous() for k, v in "
            f"torch.load('{pth}', map_location='cpu').items()}}, '{out}')\"")


def load_fid_inception(path: str | pathlib.Path, image_size: int = inception.FID_IMAGE_SIZE
                       ) -> tuple[inception.InceptionConfig, Any]:
    """(config, params) of a safetensors conversion of pytorch-fid's FID Inception weights; the width divisor and
    class count come from the tensor shapes."""
    path = pathlib.Path(path).expanduser().absolute()
    if not path.is_file():
        raise PathNotFoundError(f"Inception weights {path} do not exist; pass --inception with the safetensors "
                                "conversion of pt_inception-2015-12-05-6726825d.pth (see mvrag_jax/eval/encoders.py)")
    if path.suffix != ".safetensors":
        raise EncoderError(f"{path} is not a .safetensors file; convert the torch file once with: "
                           f"{convert_command(path.name)}")
    state_dict = {k: v for k, v in read_safetensors(path).items() if not k.endswith(".num_batches_tracked")}
    first, fc = state_dict.get("Conv2d_1a_3x3.conv.weight"), state_dict.get("fc.weight")
    if first is None or fc is None or first.shape[0] == 0 or 32 % first.shape[0]:
        raise EncoderError(f"{path} lacks Conv2d_1a_3x3.conv.weight / fc.weight of an Inception-v3 (pytorch-fid key "
                           "layout); is it the FID Inception state dict?")
    try:
        config = inception.InceptionConfig(width_divisor=32 // first.shape[0], num_classes=int(fc.shape[0]),
                                           image_size=image_size)
    except inception.InceptionConfigError as e:
        raise EncoderError(f"{path}: {e}") from e
    shapes = jax.eval_shape(inception.init_params, config, jax.random.key(0))
    params = state_dict_to_params(state_dict, shapes, component=f"{path.name} inception",
                                  hint="expected pytorch-fid's FID Inception (FIDInceptionA/C/E blocks, fc 1008); "
                                       "torchvision's inception_v3 weights carry AuxLogits.* and a 1000-class fc")
    return config, params


def inception_encoder(config: inception.InceptionConfig, params: Any
                      ) -> Callable[[Sequence[np.ndarray]], tuple[np.ndarray, np.ndarray]]:
    params = jax.device_put(params)

    def embed(pictures: Sequence[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        pixels = np.stack([_same_size(p, pictures[0].shape[:2]) for p in pictures]).astype(np.float32) / 255.0
        parts = _batched(lambda x: inception.features(config, params, jnp.asarray(x)), pixels)
        return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])
    return embed


def _same_size(picture: np.ndarray, hw: tuple[int, int]) -> np.ndarray:
    """Inception resizes every input to 299 itself; images of other sizes in one set are first brought to the
    first one's size with PIL bilinear so they stack (pytorch-fid loads one image at a time instead)."""
    picture = image_ops.to_rgb(picture)
    if picture.shape[:2] == tuple(hw):
        return picture
    from PIL import Image
    return np.asarray(Image.fromarray(picture).resize((hw[1], hw[0]), Image.Resampling.BILINEAR))


# ---- all -------------------------------------------------------------------------------------------------------------
def load_encoders(*, clip_model: str | None = None, dinov2_path: str | None = None,
                  inception_path: str | None = None, ir_path: str | None = None, ir_output: str = "embedding"
                  ) -> Encoders:
    from mvrag_jax.eval import ir as ir_model
    missing = {}
    clip = dino = incep = ir = None
    if clip_model:
        clip = clip_encoder(clip_model)
    else:
        missing["clip"] = "no CLIP model given (--clip_model DIR: a transformers CLIPModel folder)"
    if dinov2_path:
        dino = dinov2_encoder(*load_dinov2(dinov2_path))
    else:
        missing["dinov2"] = "no DINOv2 weights given (--dinov2 DIR, or --ckpt with a dinov2 component)"
    if inception_path:
        incep = inception_encoder(*load_fid_inception(inception_path))
    else:
        missing["inception"] = ("no Inception weights given (--inception FILE: pt_inception-2015-12-05 as "
                                "safetensors)")
    if ir_path:
        ir = ir_model.ir_encoder(*ir_model.load_ir(ir_path), output=ir_output)
    else:
        missing["ir"] = ("no IR weights given (--ir DIR: the GUIE instance-retrieval model as safetensors, see "
                         "mvrag_jax/eval/ir.py)")
    return Encoders(clip, dino, incep, missing, ir)
