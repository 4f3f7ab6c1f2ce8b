"""mvrag_jax/convert/ldm_keys.py: the ldm -> release rename tables, on every key of the official tiny files."""

import numpy as np
import pytest

from mvrag_jax.convert import ldm_keys
from mvrag_jax.inputs.release import read_safetensors_shapes
from tests.conftest import IMAGEDREAM_FILE, MVDREAM_FILE


def _stage(shapes, prefix):
    return {k[len(prefix):]: v for k, v in shapes.items() if k.startswith(prefix)}


@pytest.fixture(scope="module")
def mvdream_shapes():
    return read_safetensors_shapes(MVDREAM_FILE)


def test_vae_table_maps_every_ldm_key_and_back(mvdream_shapes):
    keys = _stage(mvdream_shapes, "first_stage_model.")
    levels = ldm_keys.vae_levels(keys)
    assert levels == 2
    renamed = {key: ldm_keys.rename(key, ldm_keys.VAE_TABLE, levels=levels) for key in keys}
    assert None not in renamed.values(), [k for k, v in renamed.items() if v is None]
    assert len(set(renamed.values())) == len(keys)  # one-to-one
    for key, ours in renamed.items():
        assert ldm_keys.rename(ours, ldm_keys.VAE_TABLE, levels=levels, inverse=True) == key
    # ldm counts decoder levels from the bottom, diffusers from the top.
    assert renamed["decoder.up.1.block.0.conv1.weight"] == "decoder.up_blocks.0.resnets.0.conv1.weight"
    assert renamed["decoder.up.1.upsample.conv.weight"] == "decoder.up_blocks.0.upsamplers.0.conv.weight"
    assert renamed["encoder.down.0.downsample.conv.bias"] == "encoder.down_blocks.0.downsamplers.0.conv.bias"
    assert renamed["decoder.mid.attn_1.proj_out.weight"] == "decoder.mid_block.attentions.0.to_out.0.weight"
    assert renamed["encoder.norm_out.weight"] == "encoder.conv_norm_out.weight"


def test_text_table_maps_every_openclip_key_but_the_fused_and_unused_ones(mvdream_shapes):
    keys = _stage(mvdream_shapes, "cond_stage_model.model.")
    assert ldm_keys.text_layers(keys) == 3
    for key in keys:
        renamed = ldm_keys.rename(key, ldm_keys.TEXT_TABLE)
        if ldm_keys.IN_PROJ.match(key) or key in ldm_keys.TEXT_UNUSED:
            assert renamed is None, key
            continue
        assert renamed is not None, key
        assert ldm_keys.rename(renamed, ldm_keys.TEXT_TABLE, inverse=True) == key
    assert ldm_keys.rename("transformer.resblocks.2.mlp.c_fc.bias", ldm_keys.TEXT_TABLE) == \
        "encoder.layers.2.mlp.fc1.bias"


def test_in_proj_splits_into_q_k_v_and_fuses_back():
    fused = np.arange(6 * 2, dtype=np.float32).reshape(6, 2)  # [3 * width, width], width 2
    split = ldm_keys.split_in_proj("transformer.resblocks.4.attn.in_proj_weight", fused)
    assert sorted(split) == [f"encoder.layers.4.self_attn.{n}_proj.weight" for n in "kqv"]
    np.testing.assert_array_equal(split["encoder.layers.4.self_attn.q_proj.weight"], fused[:2])
    np.testing.assert_array_equal(split["encoder.layers.4.self_attn.v_proj.weight"], fused[4:])
    np.testing.assert_array_equal(ldm_keys.fuse_in_proj(split, 4, "weight"), fused)


def test_unet_keys_after_the_prefix_are_the_mvrag_release_keys():
    """MV-RAG's mv_unet.py kept ldm's module names: ImageDream's UNet keys (minus the prefix and the resampler)
    are exactly the tiny MV-RAG-layout names our UNet mirrors (checked through its param paths)."""
    from mvrag_jax.convert.components import COMPONENTS_BY_NAME, abstract_params
    from mvrag_jax.convert.keys import flatten, flax_path_to_torch_key
    from mvrag_jax.convert.ldm_sources import _unet_config, read_official_config
    shapes = read_safetensors_shapes(IMAGEDREAM_FILE)
    unet = {k[len(ldm_keys.UNET_PREFIX):] for k in shapes if k.startswith(ldm_keys.UNET_PREFIX)
            and not k.startswith(ldm_keys.UNET_PREFIX + ldm_keys.RESAMPLER_PREFIX)}
    config = _unet_config(read_official_config(IMAGEDREAM_FILE.parent / "imagedream.yaml", "imagedream"), True,
                          IMAGEDREAM_FILE)
    ours = {flax_path_to_torch_key(p) for p in flatten(abstract_params(COMPONENTS_BY_NAME["unet"], config))}
    assert unet == ours
