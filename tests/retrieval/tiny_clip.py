"""A tiny random transformers CLIPModel folder, written with numpy alone (deterministic from its seed).

    python -m tests.retrieval.tiny_clip OUT_DIR      # the model tests/retrieval/make_clip_fixture.py was run on

Key names and shapes come from our towers' param trees mapped back to torch keys (the converter's table) plus the
CLIPModel extras; make_clip_fixture.py loads the folder with transformers and fails on any missing or unexpected key,
so the layout is checked against transformers itself.
"""

import json
import pathlib
import shutil
import sys

import jax
import numpy as np

from mvrag_jax.convert.components import COMPONENTS_BY_NAME, abstract_params
from mvrag_jax.convert.keys import params_to_state_dict
from mvrag_jax.inputs.images import OPENAI_CLIP_MEAN, OPENAI_CLIP_STD
from mvrag_jax.models import clip
from mvrag_jax.inputs.release import write_safetensors
from tests.conftest import TINY_RELEASE

SEED = 0
PROJECTION_DIM = 16
TEXT = {"vocab_size": 574, "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2,
        "num_attention_heads": 2, "max_position_embeddings": 77, "hidden_act": "quick_gelu", "layer_norm_eps": 1e-5,
        "bos_token_id": 572, "eos_token_id": 573, "pad_token_id": 1, "projection_dim": PROJECTION_DIM}
VISION = {"hidden_size": 48, "intermediate_size": 96, "num_hidden_layers": 2, "num_attention_heads": 4,
          "image_size": 32, "patch_size": 8, "num_channels": 3, "hidden_act": "quick_gelu", "layer_norm_eps": 1e-5,
          "projection_dim": PROJECTION_DIM}
_NORMS = ("layer_norm1", "layer_norm2", "final_layer_norm", "pre_layrnorm", "post_layernorm")


def _state_dict(component: str, config, prefix: str, rng: np.random.Generator) -> dict[str, np.ndarray]:
    zeros = jax.tree.map(lambda s: np.zeros(s.shape, s.dtype), abstract_params(COMPONENTS_BY_NAME[component], config))
    shapes = params_to_state_dict(zeros)
    tensors = {}
    for key in sorted(shapes):
        shape = shapes[key].shape
        noise = rng.normal(0.0, 0.1, size=shape).astype(np.float32)
        is_norm_scale = key.endswith(".weight") and key.split(".")[-2] in _NORMS
        tensors[prefix + key] = (1.0 + noise) if is_norm_scale else noise * (3.0 if "embedding" in key else 1.0)
    return tensors


def write_tiny_clip(out_dir: str | pathlib.Path, seed: int = SEED, preprocessor: bool = True) -> pathlib.Path:
    """Write config.json, model.safetensors, the tiny release's tokenizer and (optionally) preprocessor_config.json."""
    out = pathlib.Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    tensors = _state_dict("clip_text", clip.CLIPTextConfig.from_dict(TEXT), clip.TEXT_PREFIX, rng)
    tensors.update(_state_dict("clip_vision", clip.CLIPVisionConfig.from_dict(VISION), clip.VISION_PREFIX, rng))
    tensors["text_projection.weight"] = rng.normal(0, 0.2, (PROJECTION_DIM, TEXT["hidden_size"])).astype(np.float32)
    tensors["visual_projection.weight"] = rng.normal(0, 0.2, (PROJECTION_DIM, VISION["hidden_size"])).astype(np.float32)
    tensors["logit_scale"] = np.asarray(2.6592, np.float32)
    write_safetensors(out / "model.safetensors", tensors)
    config = {"architectures": ["CLIPModel"], "model_type": "clip", "projection_dim": PROJECTION_DIM,
              "logit_scale_init_value": 2.6592, "text_config": TEXT, "vision_config": VISION}
    (out / "config.json").write_text(json.dumps(config, indent=1))
    for path in (TINY_RELEASE / "tokenizer").iterdir():
        shutil.copy(path, out / path.name)
    if preprocessor:
        size = VISION["image_size"]
        (out / "preprocessor_config.json").write_text(json.dumps({
            "image_processor_type": "CLIPImageProcessor", "do_resize": True, "size": {"shortest_edge": size},
            "resample": 3, "do_center_crop": True, "crop_size": {"height": size, "width": size}, "do_rescale": True,
            "rescale_factor": 1 / 255, "do_normalize": True, "image_mean": list(OPENAI_CLIP_MEAN),
            "image_std": list(OPENAI_CLIP_STD), "do_convert_rgb": True}, indent=1))
    return out


def fixture_inputs() -> tuple[list[str], np.ndarray]:
    """The prompts and uint8 images [n, 40, 48, 3] the parity fixture was computed on."""
    prompts = ["a red cube", "A Blue Sphere on a table", "an orange cylinder, 3d asset", ""]
    rng = np.random.default_rng(1)
    images = rng.integers(0, 256, size=(3, 40, 48, 3), dtype=np.uint8)
    images[1, :, :24] = (255, 0, 0)  # some structure, not just noise
    return prompts, images


if __name__ == "__main__":
    print(write_tiny_clip(sys.argv[1]))
