"""mvrag bench reconstruct: LGM and re-render seconds per object, the compile apart."""

import json

import jax

from mvrag_jax.bench.reconstruct import bench_reconstruct, random_lgm
from mvrag_jax.cli.main import main
from mvrag_jax.convert.lgm import abstract_params, load_lgm
from mvrag_jax.models import lgm
from tests.conftest import REFERENCE

TINY = REFERENCE / "lgm_tiny" / "model_fp16.safetensors"


def test_figures_of_the_tiny_lgm():
    config, params = load_lgm(TINY, input_size=16)
    figures = bench_reconstruct(config, params, steps=2, render_size=16, num_renders=3, weights=str(TINY))
    assert figures["gaussians"] == config.num_gaussians and figures["renders"] == 3 and figures["steps"] == 2
    assert figures["parameters"] == sum(x.size for x in jax.tree_util.tree_leaves(params))
    assert 0 < figures["lgm_s"] and 0 < figures["render_s"]
    assert figures["object_s"] >= figures["lgm_s"] + figures["render_s"] - 1e-6  # the whole call holds both stages
    assert figures["first_call"]["wall_s"] == figures["first_call_s"]


def test_random_weights_have_the_configs_shapes():
    config = lgm.LGMConfig(input_size=32, down_channels=(8, 8, 16, 16, 32, 32), up_channels=(32, 32, 16, 16, 8),
                           groups=4, attention_heads=2)
    params = jax.eval_shape(lambda: random_lgm(config))  # the structure, without compiling the init
    shapes = jax.tree_util.tree_map(lambda x: x.shape, params)
    expected = jax.tree_util.tree_map(lambda x: x.shape, abstract_params(config))
    assert shapes == expected


def test_cli_prints_one_json(capsys):
    assert main(["mvrag", "bench", "reconstruct", "--lgm", str(TINY), "--steps", "1", "--render_size", "8", "--lgm_input_size", "16",
                 "--compile_cache_dir", "none"]) == 0
    figures = json.loads(capsys.readouterr().out)
    assert figures["weights"] == str(TINY) and figures["render_size"] == 8 and figures["renders"] == 18
