"""mvrag_jax/models/resampler.py: parity with the official Resampler, sizes from releases and configs, logical names."""

import dataclasses
import json
import pathlib
import shutil

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import mvrag_sd21, tiny
from mvrag_jax.convert.checkpoint import config_from_dict, config_to_dict
from mvrag_jax.inputs.release import Release, read_safetensors, write_safetensors
from mvrag_jax.models.resampler import ResamplerConfig, ResamplerConfigError, init_params, resample
from mvrag_jax.sharding import DEFAULT_RULES
from mvrag_jax.verify import run_case
from mvrag_jax.verify.models import ReleaseModels
from tests.conftest import CASES, REFERENCE, TINY_RELEASE


def _resampler_release(root: pathlib.Path, config: dict | None, tensors: dict | None = None) -> Release:
    """A release folder holding only model_index.json and resampler/ (tiny weights unless `tensors` is given)."""
    (root / "resampler").mkdir(parents=True)
    shutil.copy(TINY_RELEASE / "model_index.json", root)
    if tensors is None:
        tensors = read_safetensors(TINY_RELEASE / "resampler" / "model.safetensors")
    write_safetensors(root / "resampler" / "model.safetensors", tensors)
    if config is not None:
        (root / "resampler" / "config.json").write_text(json.dumps(config))
    return Release.open(root)


def _tiny_file_config() -> dict:
    return json.loads((TINY_RELEASE / "resampler" / "config.json").read_text())


def test_matches_official_resampler_on_reference_case():
    result = run_case("resampler", ReleaseModels.open(TINY_RELEASE), CASES)
    assert result.status == "pass", result.details
    assert set(result.details) == {"tokens", "tokens_clip"}


def test_full_size_parameter_count_matches_release_manifest():
    config = ResamplerConfig.from_config(mvrag_sd21.get_config())
    shapes = nn.unbox(jax.eval_shape(init_params, config, jax.random.key(0)))
    total = sum(leaf.size for leaf in jax.tree.leaves(shapes))
    manifest = json.loads((REFERENCE / "manifests" / "resampler.json").read_text())
    assert total == 48_541_696 == manifest["total_parameters"]


def test_full_size_config_is_the_official_default():
    assert ResamplerConfig.from_config(mvrag_sd21.get_config()) == ResamplerConfig()


def test_tiny_config_matches_tiny_release():
    from_release = ResamplerConfig.from_release(Release.open(TINY_RELEASE))
    assert from_release == ResamplerConfig.from_config(tiny.get_config())
    assert "config.json" in from_release.source


def test_every_kernel_has_logical_axis_names():
    config = ResamplerConfig.from_config(tiny.get_config())
    specs = nn.get_partition_spec(jax.eval_shape(init_params, config, jax.random.key(0)))
    flat = {jax.tree_util.keystr(path): spec for path, spec in
            jax.tree_util.tree_leaves_with_path(specs, is_leaf=lambda x: isinstance(x, jax.sharding.PartitionSpec))}
    kernels = {path: spec for path, spec in flat.items() if "kernel" in path}
    assert len(kernels) == 2 + 5 * config.depth  # proj_in, proj_out; to_q, to_kv, to_out and two FF linears per layer
    for path, spec in kernels.items():
        assert len(spec) == 2 and None not in spec, (path, spec)
        nn.logical_to_mesh_axes(spec, DEFAULT_RULES)  # raises if a logical name is unknown or repeated
    assert flat["['latents']"][-1] is not None


def test_tokens_ignore_feature_order_and_other_batch_rows():
    """No positional encoding: permuting the feature tokens must not change the output; rows are independent."""
    config, params = ReleaseModels.open(TINY_RELEASE).get("resampler")
    x = jax.random.normal(jax.random.key(2), (3, 17, config.embedding_dim))
    with jax.default_matmul_precision("highest"):
        tokens = resample(config, params, x)
        permuted = resample(config, params, x[:, ::-1])
        single = resample(config, params, x[1:2])
    assert tokens.shape == (3, config.num_queries, config.output_dim)
    np.testing.assert_allclose(permuted, tokens, atol=1e-5, rtol=1e-5)
    np.testing.assert_allclose(single[0], tokens[1], atol=1e-5, rtol=1e-5)


def test_bfloat16_compute_keeps_float32_params_and_tracks_float32():
    models = ReleaseModels.open(TINY_RELEASE)
    config, params = models.get("resampler")
    case = np.load(CASES / "resampler.npz")
    bf16 = dataclasses.replace(config, dtype="bfloat16")
    tokens = resample(bf16, params, case["x_clip"])
    assert tokens.dtype == jnp.bfloat16
    assert all(leaf.dtype == np.float32 for leaf in jax.tree.leaves(params))
    # bf16 keeps 8 mantissa bits; LayerNorm-ed outputs of O(1) land within a few 1e-2 of the fp32 reference.
    error = np.abs(np.asarray(tokens, np.float32) - case["tokens_clip"])
    assert error.max() < 0.1 and error.mean() < 0.02


def test_release_without_config_and_ambiguous_heads_is_a_clear_error(tmp_path):
    """The tiny resampler has heads*dim_head = 32: shapes cannot split it and 32 is not a multiple of 64."""
    release = _resampler_release(tmp_path, config=None)
    with pytest.raises(ResamplerConfigError, match=r"to_q has 32 outputs.*dim_head=64.*config\.json"):
        ResamplerConfig.from_release(release)


def test_config_json_contradicting_weights_is_an_error(tmp_path):
    release = _resampler_release(tmp_path, config=_tiny_file_config() | {"num_queries": 16, "heads": 8})
    with pytest.raises(ResamplerConfigError) as info:
        ResamplerConfig.from_release(release)
    message = str(info.value)
    assert "num_queries=16 (tensors say 4)" in message
    assert "heads*dim_head=8*8" in message and "to_q has 32 outputs" in message
    assert "delete it" in message


def test_config_json_with_heads_only_derives_dim_head(tmp_path):
    file_config = {k: v for k, v in _tiny_file_config().items() if k not in ("dim_head", "depth", "embedding_dim")}
    config = ResamplerConfig.from_release(_resampler_release(tmp_path, config=file_config))
    assert config == ResamplerConfig.from_config(tiny.get_config())
    assert config.source.endswith("from shapes: depth, dim_head, embedding_dim")


def test_config_survives_the_checkpoint_json_round_trip():
    config = ResamplerConfig.from_release(Release.open(TINY_RELEASE))
    again = config_from_dict(ResamplerConfig, json.loads(json.dumps(config_to_dict(config))))
    assert again == config and again.source == config.source


def test_from_config_rejects_unknown_fields_and_dtypes():
    cfg = tiny.get_config()
    cfg.runtime.dtype = "float16"
    with pytest.raises(ValueError, match="float16"):
        ResamplerConfig.from_config(cfg)
    cfg = tiny.get_config()
    cfg.model.resampler.heads_count = 3
    with pytest.raises(ValueError, match="heads_count"):
        ResamplerConfig.from_config(cfg)
