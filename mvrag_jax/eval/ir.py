"""The paper's "IR" metric: image-image similarity under Shao & Cui's GUIE instance-retrieval model
(models/guie.py), between every generated view and the prompt's held-out references, x 100, like CLIP and DINOv2.

Weights: the authors publish a PyTorch state dict only (Kaggle dataset `louieshao/guieweights0732`, named in their
README). Convert it once where torch is installed, into a folder (`--ir DIR`):

    mkdir -p guie && python -c "import torch, safetensors.torch as s; s.save_file({k: v.contiguous() for k, v in
    torch.load('GUIE.pth', map_location='cpu').items()}, 'guie/model.safetensors')"

(`convert_command` prints the line for your file names.) The DistributedDataParallel `module.` prefix the training
scripts leave on the keys is stripped on load; `fc2.weight` (the CosFace training head) is dropped. DIR may hold a
`config.json` overriding the tower settings the shapes cannot give: `num_attention_heads` (default width / 80, as
OpenCLIP ViT-H), `patch_stride` (default kernel - 2 = 12: the released model is `open_clip_280_overlap`'s), `image_size`
(default: what the positions and stride imply, 290 for the release), `layer_norm_eps`. A key that is missing,
unexpected or of the wrong shape raises CheckpointKeyError.

Which output: the 64-d fc1 embedding (OUTPUT_64). It is what the model was trained for and what the competition
scored (64-d embeddings, kNN by cosine: the CosFace head normalises fc1's output, so cosine is its native
similarity), and the 1024-d projection (`output="projection"`) is an intermediate the last stages trained only
through fc1. The paper does not say which it used; the 64-d one is the model's embedding as released.

Preprocessing, as the GUIE training transform: the whole image resized to 290 x 290 (no crop, aspect not kept;
PIL bilinear here, albumentations/cv2 linear there: equal when upsampling 256 px views, they differ slightly when
downsampling large references), /255, OpenCLIP mean/std.
"""

import json
import pathlib
from typing import Any, Callable, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from PIL import Image

from mvrag_jax.convert import guie_keys
from mvrag_jax.convert.keys import state_dict_to_params
from mvrag_jax.inputs import images as image_ops
from mvrag_jax.inputs.release import read_safetensors
from mvrag_jax.models import guie
from mvrag_jax.models.clip import CLIPConfigError, CLIPVisionConfig
from mvrag_jax.errors import MvragError, PathNotFoundError, UsageError

WEIGHTS_FILE = "model.safetensors"
CONFIG_FILE = "config.json"
OVERLAP = 2  # open_clip_280_overlap's conv1: stride = kernel - 2 (14 -> 12)
OUTPUT_64 = "embedding"
OUTPUTS = (OUTPUT_64, "projection")
CONFIG_KEYS = ("num_attention_heads", "patch_stride", "image_size", "layer_norm_eps", "hidden_act")


class IRWeightsError(MvragError, ValueError):
    """--ir does not point at usable GUIE weights; the message names the file and the fix."""


def convert_command(pth: str = "GUIE.pth", out: str = f"guie/{WEIGHTS_FILE}") -> str:
    return (f"python -c \"import torch, safetensors.torch as s; s.save_file({{k: v.contiguous() for k, v in "
            f"torch.load('{pth}', map_location='cpu').items()}}, '{out}')\"")


def config_from_weights(state_dict: dict[str, np.ndarray], overrides: dict[str, Any], source: str
                        ) -> guie.GUIEConfig:
    """The model config: sizes from the tensor shapes, the rest from `overrides` (config.json) or the release's."""
    try:
        sizes = guie_keys.sizes(state_dict)
    except guie_keys.GUIEKeyError as e:
        raise IRWeightsError(f"{source}: {e}") from e
    unknown = sorted(set(overrides) - set(CONFIG_KEYS))
    if unknown:
        raise IRWeightsError(f"{source}: config.json keys {unknown} are not settings of the IR model; use "
                             f"{list(CONFIG_KEYS)}")
    stride = int(overrides.get("patch_stride", max(sizes["patch_size"] - OVERLAP, 1)))
    image_size = int(overrides.get("image_size", (sizes["grid_size"] - 1) * stride + sizes["patch_size"]))
    width = sizes["hidden_size"]
    heads = int(overrides.get("num_attention_heads", max(width // guie.OPENCLIP_HEAD_WIDTH, 1)))
    try:
        vision = CLIPVisionConfig(
            hidden_size=width, intermediate_size=sizes["intermediate_size"],
            num_hidden_layers=sizes["num_hidden_layers"], num_attention_heads=heads, image_size=image_size,
            patch_size=sizes["patch_size"], num_channels=sizes["num_channels"], patch_stride=stride,
            hidden_act=overrides.get("hidden_act", "gelu"), layer_norm_eps=float(overrides.get("layer_norm_eps", 1e-5)))
    except CLIPConfigError as e:
        raise IRWeightsError(f"{source}: {e}; fix config.json") from e
    if vision.grid_size != sizes["grid_size"]:
        raise IRWeightsError(f"{source}: image_size {image_size} with stride {stride} gives a {vision.grid_size}^2 "
                             f"grid but the weights have {sizes['grid_size']}^2 positions; fix image_size/patch_stride "
                             "in config.json")
    return guie.GUIEConfig(vision, sizes["projection_dim"], sizes["embedding_dim"])


def load_ir(path: str | pathlib.Path) -> tuple[guie.GUIEConfig, Any]:
    """(config, params) from an --ir folder (model.safetensors [+ config.json]) or a .safetensors file."""
    path = pathlib.Path(path).expanduser().absolute()
    folder, weights = (path, path / WEIGHTS_FILE) if path.is_dir() else (path.parent, path)
    if not weights.is_file():
        raise PathNotFoundError(f"IR weights {weights} do not exist; pass --ir with a folder holding {WEIGHTS_FILE}, "
                                f"converted once from the GUIE .pth with: {convert_command()}")
    if weights.suffix != ".safetensors":
        raise IRWeightsError(f"{weights} is not a .safetensors file; convert the torch file once with: "
                             f"{convert_command(weights.name)}")
    overrides = json.loads((folder / CONFIG_FILE).read_text()) if (folder / CONFIG_FILE).is_file() else {}
    state_dict = read_safetensors(weights)
    config = config_from_weights(state_dict, overrides, str(weights))
    shapes = nn.unbox(jax.eval_shape(guie.init_params, config, jax.random.key(0)))
    params = state_dict_to_params(guie_keys.to_model_keys(state_dict), shapes, component=f"{weights.name} IR (GUIE)",
                                  hint="expected the GUIE add_layer_model state dict: backbone.* (open_clip "
                                       "VisualTransformer), fc1.*, optionally fc2.weight and a module. prefix")
    return config, params


def processor(config: guie.GUIEConfig) -> image_ops.CLIPImageProcessorConfig:
    size = config.vision.image_size
    return image_ops.CLIPImageProcessorConfig(shortest_edge=None, resize_hw=(size, size), do_center_crop=False,
                                              resample=int(Image.Resampling.BILINEAR), image_mean=guie.MEAN,
                                              image_std=guie.STD)


def ir_encoder(config: guie.GUIEConfig, params: Any, output: str = OUTPUT_64, batch: int = 16
               ) -> Callable[[Sequence[np.ndarray]], np.ndarray]:
    """uint8 images -> [n, 64] (or [n, 1024] with output="projection") float32 embeddings."""
    if output not in OUTPUTS:
        raise UsageError(f"IR output {output!r}; choose one of {OUTPUTS}")
    params = jax.device_put(params)
    forward = jax.jit(lambda p, x: getattr(guie.embed(config, p, x), output))
    prep = processor(config)

    def embed(pictures: Sequence[np.ndarray]) -> np.ndarray:
        pixels = image_ops.clip_preprocess(list(pictures), prep)
        out = []
        for start in range(0, len(pixels), batch):  # zero-padded to one shape: one compile
            chunk = pixels[start:start + batch]
            padded = np.concatenate([chunk, np.zeros((batch - len(chunk),) + chunk.shape[1:], chunk.dtype)])
            out.append(np.asarray(forward(params, jnp.asarray(padded)), np.float32)[:len(chunk)])
        return np.concatenate(out)
    return embed
