"""The init converter at FULL size, without allocating it: the default (official SD2.1) MVDream/ImageDream configs
are the released MV-RAG sizes, and full-size OpenCLIP ViT-H-14 / ldm VAE key sets (zero-stride views) convert onto
exactly the keys and shapes of the published MV-RAG components (tests/reference/manifests)."""

import dataclasses
import json
import pathlib
import re

import numpy as np

from configs import mvrag_sd21
from mvrag_jax.convert import ldm_keys
from mvrag_jax.convert.components import COMPONENTS_BY_NAME, abstract_params
from mvrag_jax.convert.keys import flatten, state_dict_to_params
from mvrag_jax.convert.ldm_sources import (SD21_CONFIGS, read_official_config, resampler_config, text_from_openclip,
                                           vae_config_from_ldm, vae_keys_from_ldm)
from mvrag_jax.models import clip, resampler, unet, vae
from tests.conftest import MANIFESTS

_RUNTIME = ("image_branch", "num_frames", "dtype", "remat", "attention")


def _zeros(shape) -> np.ndarray:
    return np.broadcast_to(np.zeros((), np.float32), tuple(shape))


def _manifest(name: str) -> dict[str, tuple[int, ...]]:
    return {e["key"]: tuple(e["shape"]) for e in json.loads((MANIFESTS / f"{name}.json").read_text())["keys"]}


def _sizes(config) -> dict:
    return {k: v for k, v in dataclasses.asdict(config).items() if k not in _RUNTIME + ("source",)}


def test_default_unet_configs_are_the_released_mvrag_unet():
    released = unet.UNetConfig.from_config(mvrag_sd21.get_config())
    for model in ("mvdream", "imagedream"):
        config = unet.UNetConfig.from_kwargs(SD21_CONFIGS[model]["unet_config"]["params"], model == "imagedream")
        assert _sizes(config) == _sizes(released), model


def test_the_released_mvrag_resampler_has_imagedreams_sizes():
    """MV-RAG's published resampler/model.safetensors, read with ImageDream's rule (dim_head 64), is the full-size
    ResamplerConfig: MV-RAG kept ImageDream's resampler."""
    state = {key: _zeros(shape) for key, shape in _manifest("resampler").items()}
    assert resampler_config(state, "release") == resampler.ResamplerConfig()


def _openclip_vit_h14_text() -> dict[str, np.ndarray]:
    """open_clip ViT-H-14's text tower key shapes: 24 resblocks of width 1024, MLP 4096, 77 positions, vocab 49408."""
    width, shapes = 1024, {"token_embedding.weight": (49408, 1024), "positional_embedding": (77, 1024),
                           "ln_final.weight": (1024,), "ln_final.bias": (1024,), "text_projection": (1024, 1024),
                           "logit_scale": ()}
    for i in range(24):
        block = f"transformer.resblocks.{i}."
        shapes |= {block + "ln_1.weight": (width,), block + "ln_1.bias": (width,), block + "ln_2.weight": (width,),
                   block + "ln_2.bias": (width,), block + "attn.in_proj_weight": (3 * width, width),
                   block + "attn.in_proj_bias": (3 * width,), block + "attn.out_proj.weight": (width, width),
                   block + "attn.out_proj.bias": (width,), block + "mlp.c_fc.weight": (4 * width, width),
                   block + "mlp.c_fc.bias": (4 * width,), block + "mlp.c_proj.weight": (width, 4 * width),
                   block + "mlp.c_proj.bias": (width,)}
    return {key: _zeros(shape) for key, shape in shapes.items()}


def test_openclip_vit_h14_text_becomes_sd21s_23_layer_text_encoder():
    stage = SD21_CONFIGS["mvdream"]["cond_stage_config"]["params"]
    config, state = text_from_openclip(_openclip_vit_h14_text(), stage, "ViT-H-14")
    assert config == clip.CLIPTextConfig.from_config(mvrag_sd21.get_config())
    released = {k: v for k, v in _manifest("clip_text").items() if not k.endswith("position_ids")}
    assert {k: tuple(v.shape) for k, v in state.items()} == {k.removeprefix(clip.TEXT_PREFIX): v
                                                           for k, v in released.items()}


def test_the_released_vae_in_ldm_names_converts_onto_the_sd21_vae():
    """The published VAE's keys in ldm names (the table's inverse, mid-block attention as 1x1 convs, as ldm stores
    them) convert onto the full-size VAE built from the official YAML's ddconfig."""
    released = _manifest("vae")
    levels = len(vae.VAEConfig().block_out_channels)
    ldm = {}
    for key, shape in released.items():
        name = ldm_keys.rename(key, ldm_keys.VAE_TABLE, levels=levels, inverse=True)
        assert name is not None, key
        if re.search(r"mid\.attn_1\.(q|k|v|proj_out)\.weight$", name):
            shape = shape + (1, 1)
        ldm[name] = _zeros(shape)
    assert sum(k.startswith("decoder.up.3.") for k in ldm) == sum(k.startswith("decoder.up_blocks.0.")
                                                                  for k in released)
    config = vae_config_from_ldm(read_official_config(None, "mvdream"), "first_stage_config",
                                 pathlib.Path("sd-v2.1-base-4view.pt"))
    assert config == vae.VAEConfig.from_config(mvrag_sd21.get_config())
    component = COMPONENTS_BY_NAME["vae"]
    params = state_dict_to_params(component.normalize_keys(vae_keys_from_ldm(ldm)),
                                  abstract_params(component, config), component="vae")
    assert len(flatten(params)) == len(released)
