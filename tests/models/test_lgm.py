"""mvrag_jax/models/lgm.py: parity with the official LGM network (tests/reference/lgm_tiny, computed by
tools/official_cases/lgm_tiny.py), the released "big" sizes, activations and input checks."""

import json

import jax
import numpy as np
import pytest

from mvrag_jax.convert import lgm as convert_lgm
from mvrag_jax.models import lgm
from tests.conftest import REFERENCE

LGM_TINY = REFERENCE / "lgm_tiny"


def _tol(ref: np.ndarray) -> np.ndarray:
    return 1e-4 + 1e-4 * np.abs(ref)  # the components' tolerance of tests/reference/README.md


@pytest.fixture(scope="module")
def tiny():
    config, params = convert_lgm.load_lgm(LGM_TINY / "model_fp16.safetensors", input_size=16)
    with np.load(LGM_TINY / "cases.npz") as data:
        cases = dict(data)
    return config, params, cases


def _inputs(cases: dict, i: int) -> np.ndarray:
    rays = cases[f"rays_{i}"].transpose(0, 2, 3, 1)                                   # [4, h, w, 6]
    images = cases["images"].transpose(0, 1, 3, 4, 2)                                  # [b, 4, h, w, 3]
    return np.concatenate([images, np.broadcast_to(rays, (*images.shape[:-1], 6))], -1)


@pytest.mark.parametrize("i", [0, 1])
def test_gaussians_match_official_forward_gaussians(tiny, i):
    config, params, cases = tiny
    with jax.default_matmul_precision("highest"):
        raw = np.asarray(lgm.raw_features(config, params, _inputs(cases, i)))
        gaussians = np.asarray(lgm.forward_gaussians(config, params, _inputs(cases, i)))
    assert raw.shape == gaussians.shape == (2, 4 * 8 * 8, 14)
    ref_raw, ref = cases[f"raw_{i}"], cases[f"gaussians_{i}"]
    assert np.abs(ref_raw).max() > 1.0  # the case exercises the activations' non-linear range
    np.testing.assert_array_less(np.abs(raw - ref_raw), _tol(ref_raw))
    np.testing.assert_array_less(np.abs(gaussians - ref), _tol(ref))


def test_tiny_sizes_from_the_official_options(tiny):
    config, _, _ = tiny
    meta = json.loads((LGM_TINY / "lgm_tiny.json").read_text())
    options = meta["options"]
    assert config.down_channels == tuple(options["down_channels"])
    assert config.up_attention == tuple(options["up_attention"])
    assert config.splat_size == options["splat_size"] == 8
    total = sum(leaf.size for leaf in jax.tree.leaves(convert_lgm.abstract_params(config)))
    assert total == meta["num_parameters"]


def test_default_config_is_the_released_big_network():
    manifest = json.loads((LGM_TINY / "big_manifest.json").read_text())
    config = lgm.LGMConfig.from_shapes({k: tuple(v) for k, v in manifest.items()})
    assert config == lgm.LGMConfig()
    assert config.splat_size == 128 and config.num_gaussians == 65536  # 256 px inputs -> 128 x 128 per view
    total = sum(leaf.size for leaf in jax.tree.leaves(convert_lgm.abstract_params(config)))
    assert total == sum(int(np.prod(s)) for s in manifest.values()) == 415_042_848


def test_activations_follow_lgm():
    raw = np.array([[3.0, -3.0, 0.5, 0.0, -20.0, 0.0, 20.0, 0.0, 3.0, 0.0, 4.0, 0.0, 1.0, -1.0]], np.float32)
    g = np.asarray(lgm.activate(raw))
    np.testing.assert_allclose(g[0, 0:3], [1.0, -1.0, 0.5])                              # clamp(-1, 1)
    np.testing.assert_allclose(g[0, 3], 0.5)                                             # sigmoid
    np.testing.assert_allclose(g[0, 4:7], 0.1 * np.log1p(np.exp([-20.0, 0.0, 20.0])), rtol=1e-6)  # 0.1 softplus
    np.testing.assert_allclose(g[0, 7:11], [0.0, 0.6, 0.0, 0.8], atol=1e-7)             # unit quaternion
    np.testing.assert_allclose(g[0, 11:14], 0.5 * np.tanh([0.0, 1.0, -1.0]) + 0.5, rtol=1e-6)


def test_bad_inputs_and_configs_name_the_fix(tiny):
    config, params, _ = tiny
    with pytest.raises(lgm.LGMConfigError, match=r"expected \[b, 4, 16, 16, 9\]"):
        lgm.forward_gaussians(config, params, np.zeros((1, 4, 16, 16, 3), np.float32))
    with pytest.raises(lgm.LGMConfigError, match="multiples of groups=32"):
        lgm.LGMConfig(down_channels=(48, 64), down_attention=(False, False), up_channels=(64,), up_attention=(False,))
    with pytest.raises(lgm.LGMConfigError, match="not divisible"):
        lgm.LGMConfig(input_size=250)
