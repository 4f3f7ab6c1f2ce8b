"""The released GUIE instance-retrieval state dict (OpenCLIP visual keys under `backbone.`, plus `fc1`, `fc2`) ->
models/guie.py's param tree, and the sizes read from its tensor shapes.

The training scripts save `DistributedDataParallel(add_layer_model).state_dict()`, so every key may carry a
`module.` prefix (their own loader strips it the same way). `fc2.weight` is the CosFace classifier over the
training classes: training only, dropped.
"""

from typing import Mapping

import numpy as np

from mvrag_jax.convert.ldm_keys import IN_PROJ, TEXT_TABLE, rename, split_in_proj, text_layers

PREFIX = "backbone."
DROPPED = ("fc2.weight",)
# OpenCLIP VisualTransformer -> transformers CLIPVisionModel (models/clip.py), under backbone/. The resblock rows
# are the text tower's (same ResidualAttentionBlock); the fused in_proj splits into q/k/v as for the text tower.
VISION_TABLE = (
    ("conv1.", "embeddings.patch_embedding."),
    ("class_embedding", "embeddings.class_embedding"),
    ("positional_embedding", "embeddings.position_embedding.weight"),
    ("ln_pre.", "pre_layrnorm."),
    ("ln_post.", "post_layernorm."),
) + tuple(row for row in TEXT_TABLE if row[0].startswith("transformer.resblocks"))


class GUIEKeyError(KeyError):
    def __str__(self) -> str:
        return str(self.args[0])


def strip_module(state_dict: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    return {key.removeprefix("module."): value for key, value in state_dict.items()}


def to_model_keys(state_dict: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Released keys -> the torch-style keys of GUIEModel (`backbone.encoder.layers.0.self_attn.q_proj.weight`,
    `proj`, `fc1.weight`); unknown keys pass through unchanged so state_dict_to_params reports them."""
    out = {}
    for key, value in strip_module(state_dict).items():
        if key in DROPPED:
            continue
        if not key.startswith(PREFIX):
            out[key] = value
            continue
        inner = key[len(PREFIX):]
        if IN_PROJ.match(inner):
            out.update({PREFIX + k: v for k, v in split_in_proj(inner, value).items()})
        elif inner == "proj":
            out["proj"] = value
        else:
            renamed = rename(inner, VISION_TABLE)
            out[PREFIX + (renamed if renamed is not None else inner)] = value
    return out


def sizes(state_dict: Mapping[str, np.ndarray]) -> dict[str, int]:
    """Tower sizes that the shapes fix: width, layers, MLP width, kernel, positions, projection and embedding dims.
    (Heads and the stride are not in the shapes: heads = width / head_width, the stride comes from the config.)"""
    sd = strip_module(state_dict)
    need = ("backbone.conv1.weight", "backbone.positional_embedding", "backbone.proj", "fc1.weight")
    absent = [k for k in need if k not in sd]
    if absent:
        raise GUIEKeyError(f"the state dict lacks {absent}; is it the GUIE model (add_layer_model: backbone = "
                           "open_clip ViT-H-14-290 visual, fc1 1024 -> 64)?")
    conv, positions = sd["backbone.conv1.weight"].shape, sd["backbone.positional_embedding"].shape
    resblocks = [k[len(PREFIX):] for k in sd if k.startswith(PREFIX + "transformer.resblocks.")]
    c_fc = sd.get(PREFIX + "transformer.resblocks.0.mlp.c_fc.weight")
    grid = int(round(np.sqrt(positions[0] - 1)))
    if grid * grid + 1 != positions[0]:
        raise GUIEKeyError(f"backbone.positional_embedding has {positions[0]} rows, not CLS + a square grid")
    return {"hidden_size": int(conv[0]), "patch_size": int(conv[2]), "num_channels": int(conv[1]),
            "num_hidden_layers": text_layers(resblocks), "grid_size": grid,
            "intermediate_size": int(c_fc.shape[0]) if c_fc is not None else 4 * int(conv[0]),
            "projection_dim": int(sd["backbone.proj"].shape[1]), "embedding_dim": int(sd["fc1.weight"].shape[0])}

