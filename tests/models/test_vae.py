"""mvrag_jax/models/vae.py: parity with diffusers AutoencoderKL, sizes from releases and configs, legacy keys."""

import dataclasses
import json

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import mvrag_sd21, tiny
from mvrag_jax.convert.components import COMPONENTS_BY_NAME, abstract_params
from mvrag_jax.convert.keys import flatten, state_dict_to_params
from mvrag_jax.inputs.release import Release
from mvrag_jax.models import vae
from mvrag_jax.sharding import DEFAULT_RULES
from mvrag_jax.verify import run_case
from tests.conftest import CASES, REFERENCE, TINY_RELEASE, load_case


@pytest.fixture(scope="module")
def case() -> dict[str, np.ndarray]:
    return load_case("vae")


def test_matches_official_autoencoder_on_reference_case(release_models):
    result = run_case("vae", release_models, CASES)
    assert result.status == "pass", result.details
    assert {"posterior_mean", "posterior_logvar", "posterior_std", "decoded", "pipe_decode_latents"} <= set(
        result.details)


def test_full_size_parameter_count_matches_release_manifest():
    config = vae.VAEConfig.from_config(mvrag_sd21.get_config())
    shapes = nn.unbox(jax.eval_shape(vae.init_params, config, jax.random.key(0)))
    total = sum(leaf.size for leaf in jax.tree.leaves(shapes))
    manifest = json.loads((REFERENCE / "manifests" / "vae.json").read_text())
    assert total == 83_653_863 == manifest["total_parameters"]
    assert config.downscale_factor == 8


def test_tiny_config_matches_tiny_release():
    from_release = vae.VAEConfig.from_release(Release.open(TINY_RELEASE))
    assert from_release == vae.VAEConfig.from_config(tiny.get_config())
    assert from_release.scaling_factor == pytest.approx(0.18215)
    assert from_release.downscale_factor == 2


def test_legacy_attention_names_and_conv_weights_convert_identically(release_models):
    """Old diffusers checkpoints: mid-block attention `query/key/value/proj_attn`, stored as 1x1 convs."""
    release = release_models.release
    config, params = release_models.get("vae")
    legacy_names = {"to_q": "query", "to_k": "key", "to_v": "value", "to_out.0": "proj_attn"}
    legacy = {}
    for key, array in release.weights("vae").items():
        for new, old in legacy_names.items():
            if ".mid_block.attentions.0." in key and f".{new}." in key:
                key = key.replace(f".{new}.", f".{old}.")
                array = array[:, :, None, None] if array.ndim == 2 else array  # [c, c] -> [c, c, 1, 1]
        legacy[key] = array
    assert "encoder.mid_block.attentions.0.proj_attn.weight" in legacy
    assert legacy["decoder.mid_block.attentions.0.query.weight"].ndim == 4
    component = COMPONENTS_BY_NAME["vae"]
    converted = state_dict_to_params(component.normalize_keys(legacy), abstract_params(component, config),
                                     component="vae")
    ours, reference = flatten(converted), flatten(params)
    assert ours.keys() == reference.keys()
    for path in reference:
        np.testing.assert_array_equal(ours[path], reference[path], err_msg=str(path))


def test_legacy_attention_weight_that_is_not_1x1_is_rejected():
    bad = {"encoder.mid_block.attentions.0.query.weight": np.zeros((4, 4, 3, 3), np.float32)}
    with pytest.raises(vae.VAEConfigError, match=r"encoder\.mid_block\.attentions\.0\.to_q\.weight.*1x1 conv"):
        vae.normalize_keys(bad)


def test_sample_posterior_uses_the_explicit_key(release_models, case):
    config, params = release_models.get("vae")
    image = jnp.asarray(np.transpose(case["image"], (0, 2, 3, 1)))                 # [b, h, w, c]
    with jax.default_matmul_precision("highest"):
        mean, logvar = vae.encode(config, params, image)
    first = vae.sample_posterior(mean, logvar, jax.random.key(1))
    np.testing.assert_array_equal(first, vae.sample_posterior(mean, logvar, jax.random.key(1)))
    assert not np.allclose(first, vae.sample_posterior(mean, logvar, jax.random.key(2)))
    # Standardised draws are N(0, 1): (z - mean) / std over 2*16*16*4 = 2048 values.
    standard = np.asarray((first - mean) / vae.posterior_std(logvar))
    assert abs(standard.mean()) < 0.15 and 0.85 < standard.std() < 1.15


@pytest.mark.parametrize("shift, bound", [(1e4, 20.0), (-1e4, -30.0)])
def test_encode_clamps_logvar_like_diffusers(release_models, case, shift, bound):
    config, params = release_models.get("vae")
    bias = params["quant_conv"]["bias"]
    latent = config.latent_channels
    shifted = {**params, "quant_conv": {**params["quant_conv"],
                                        "bias": np.concatenate([bias[:latent], bias[latent:] + shift])}}
    mean, logvar = vae.encode(config, shifted, jnp.asarray(np.transpose(case["image"], (0, 2, 3, 1))))
    np.testing.assert_array_equal(logvar, np.full(logvar.shape, bound, np.float32))
    assert np.all(np.isfinite(vae.posterior_std(logvar)))


def test_decode_latents_is_scaled_clipped_decode(release_models, case):
    config, params = release_models.get("vae")
    z = jnp.asarray(np.transpose(case["z"], (0, 2, 3, 1))) * 5.0                   # large latents saturate
    with jax.default_matmul_precision("highest"):
        images = vae.decode_latents(config, params, z)
        raw = vae.decode(config, params, z / config.scaling_factor)
    assert images.shape == (2, 32, 32, 3)
    assert float(images.min()) >= 0.0 and float(images.max()) <= 1.0
    inside = (raw > -1) & (raw < 1)
    assert bool(inside.any()) and bool((~inside).any())  # both branches of the clip are exercised
    np.testing.assert_allclose(images[inside], (raw[inside] / 2 + 0.5), rtol=1e-6, atol=1e-7)


def test_bfloat16_compute_keeps_float32_params_and_stays_close(release_models, case):
    config, params = release_models.get("vae")
    bf16 = dataclasses.replace(config, dtype="bfloat16")
    z = jnp.asarray(np.transpose(case["z"], (0, 2, 3, 1)))
    decoded = vae.decode(bf16, params, z)
    assert decoded.dtype == jnp.float32
    assert all(leaf.dtype == np.float32 for leaf in jax.tree.leaves(params))
    # ~10 bf16 conv layers at 8 mantissa bits: a few 1e-2 on outputs of O(1).
    error = np.abs(np.transpose(np.asarray(decoded), (0, 3, 1, 2)) - case["decoded"])
    assert error.max() < 0.15 and error.mean() < 0.03
    assert error.max() > 0  # really computed in bf16


def test_every_param_has_logical_axis_names():
    config = vae.VAEConfig.from_config(tiny.get_config())
    specs = nn.get_partition_spec(jax.eval_shape(vae.init_params, config, jax.random.key(0)))
    leaves = jax.tree_util.tree_leaves_with_path(specs, is_leaf=lambda x: isinstance(x, jax.sharding.PartitionSpec))
    assert len(leaves) == len(Release.open(TINY_RELEASE).weights("vae"))
    for path, spec in leaves:
        name = jax.tree_util.keystr(path)
        # Conv kernels leave their spatial taps unnamed (layers.conv); channel axes and vectors are always named.
        named = spec[2:] if "kernel" in name and len(spec) == 4 else spec
        assert len(named) >= 1 and all(axis is not None for axis in named), (name, spec)
        nn.logical_to_mesh_axes(spec, DEFAULT_RULES)  # raises if a logical name is unknown or repeated


@pytest.mark.parametrize("changes, message", [
    ({"down_block_types": ["DownEncoderBlock2D", "AttnDownEncoderBlock2D"]}, "only DownEncoderBlock2D"),
    ({"act_fn": "gelu"}, "only 'silu'"),
    ({"down_block_types": ["DownEncoderBlock2D"]}, "1 down_block_types but 2 block_out_channels"),
    ({"norm_num_groups": 24}, "not divisible by norm_num_groups=24"),
])
def test_unsupported_release_configs_are_rejected(changes, message):
    raw = json.loads((TINY_RELEASE / "vae" / "config.json").read_text()) | changes
    with pytest.raises(vae.VAEConfigError, match=message):
        vae.VAEConfig.from_diffusers_config(raw)


def test_missing_config_json_is_an_error_naming_the_fix(tmp_path):
    (tmp_path / "vae").mkdir()
    (tmp_path / "model_index.json").write_text("{}")
    with pytest.raises(vae.VAEConfigError, match=r"no config\.json; copy vae/config\.json"):
        vae.VAEConfig.from_release(Release.open(tmp_path))


def test_from_config_takes_dtype_from_runtime_and_rejects_unknown_fields():
    cfg = tiny.get_config()
    cfg.runtime.dtype = "bfloat16"
    assert vae.VAEConfig.from_config(cfg).dtype == "bfloat16"
    cfg.model.vae.sample_size = 256
    with pytest.raises(vae.VAEConfigError, match="sample_size"):
        vae.VAEConfig.from_config(cfg)
