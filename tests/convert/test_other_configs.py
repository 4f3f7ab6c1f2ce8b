"""Releases of OTHER configurations convert too: every size comes from the release's own files, never from ours.

Each case writes a release component in the official layout (config.json in the release's own format, random
weights under the official keys), converts it, and checks the config read back and every tensor bit for bit.
"""

import dataclasses
import json

import numpy as np
import pytest

from mvrag_jax.models.random_params import host_random_params
from mvrag_jax.convert.components import COMPONENTS_BY_NAME, abstract_params, convert_component
from mvrag_jax.convert.keys import flatten, params_to_state_dict
from mvrag_jax.inputs.release import COMPONENT_FOLDERS, WEIGHTS_FILES, Release, write_safetensors
from mvrag_jax.models import clip, dinov2, resampler, unet, vae

RUNTIME_FIELDS = ("dtype", "remat", "num_frames", "source", "attention")  # ours, not in any release config.json

OTHER_CONFIGS = {
    "unet": unet.UNetConfig(  # num_heads instead of num_head_channels, deeper transformers, other channels
        image_size=8, in_channels=4, out_channels=8, model_channels=64, num_res_blocks=2,
        attention_resolutions=(1, 4), channel_mult=(1, 1, 2), num_heads=4, context_dim=24, camera_dim=12,
        transformer_depth=2),
    "resampler": resampler.ResamplerConfig(dim=48, depth=3, dim_head=16, heads=3, num_queries=5, embedding_dim=40,
                                           output_dim=24, ff_mult=2),
    "vae": vae.VAEConfig(block_out_channels=(32, 32, 64), layers_per_block=2, latent_channels=8),
    "clip_text": clip.CLIPTextConfig(vocab_size=100, hidden_size=48, intermediate_size=80, num_hidden_layers=3,
                                     num_attention_heads=3, hidden_act="quick_gelu"),
    "clip_vision": clip.CLIPVisionConfig(hidden_size=40, intermediate_size=64, num_hidden_layers=2,
                                         num_attention_heads=5, image_size=24, patch_size=6),
    "dinov2": dinov2.DINOv2Config(hidden_size=48, num_hidden_layers=2, num_attention_heads=3, patch_size=4,
                                  image_size=16),
}


def _release_config(config) -> dict:
    values = {k: v for k, v in dataclasses.asdict(config).items() if k not in RUNTIME_FIELDS}
    return {k: list(v) if isinstance(v, tuple) else v for k, v in values.items()}


@pytest.mark.parametrize("name", sorted(OTHER_CONFIGS))
def test_release_of_another_configuration_converts_exactly(tmp_path, name):
    component, config = COMPONENTS_BY_NAME[name], OTHER_CONFIGS[name]
    params = host_random_params(abstract_params(component, config), seed=len(name))
    (tmp_path / "model_index.json").write_text("{}")
    folder = tmp_path / COMPONENT_FOLDERS[name]
    folder.mkdir(parents=True)
    (folder / "config.json").write_text(json.dumps(_release_config(config)))
    write_safetensors(folder / WEIGHTS_FILES[name], params_to_state_dict(params))

    converted_config, converted = convert_component(Release.open(tmp_path), component)

    assert converted_config == config
    expected, got = flatten(params), flatten(converted)
    assert set(got) == set(expected)
    for path, value in expected.items():
        np.testing.assert_array_equal(got[path], value, err_msg="/".join(path))
