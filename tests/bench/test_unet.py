"""mvrag_jax/bench/unet.py: the UNet benchmark returns positive, JSON-able timings for one static-shape compile."""

import json

import pytest

from configs import tiny
from mvrag_jax.bench.unet import bench_unet


def _one_level_tiny():
    """configs/tiny.py with the UNet cut to its first level: same code paths, a fraction of the CPU compile time."""
    cfg = tiny.get_config()
    cfg.model.unet.update(image_size=8, channel_mult=(1,), attention_resolutions=(1,))
    return cfg


def test_bench_unet_reports_compile_and_step_times():
    result = bench_unet(_one_level_tiny(), batch_size=1, steps=1)
    json.dumps(result)  # JSON-able as promised
    assert result["component"] == "unet" and result["steps"] == 1 and result["dtype"] == "float32"
    assert result["num_frames"] == 4 and result["num_image_tokens"] == 2 * 4  # k retrieved x Q queries
    # One level, transformers in input_blocks_1, middle_block, output_blocks_0/1: to_k_ip + to_v_ip, 32 x 32 each.
    assert result["trainable_param_count"] == 4 * 2 * 32 * 32
    assert result["param_count"] > result["trainable_param_count"]
    for stage in ("forward", "forward_backward"):
        for key in ("lower_s", "compile_s", "step_s", "step_min_s"):
            assert result[stage][key] > 0, (stage, key)
        assert result[stage]["step_min_s"] <= result[stage]["step_s"]


def test_bench_rejects_zero_steps():
    with pytest.raises(ValueError, match="steps >= 1"):
        bench_unet(_one_level_tiny(), steps=0)


def test_host_random_params_fill_tokens_and_layer_scales():
    """A zero CLS token or layer scale would make DINOv2 embeddings zero and the fusion weight NaN."""
    import numpy as np

    from mvrag_jax.models.random_params import host_random_params
    from mvrag_jax.convert.components import COMPONENTS_BY_NAME, abstract_params
    from mvrag_jax.convert.keys import flatten
    from mvrag_jax.models.dinov2 import DINOv2Config
    component = COMPONENTS_BY_NAME["dinov2"]
    params = flatten(host_random_params(abstract_params(component, DINOv2Config.from_config(tiny.get_config()))))
    by_name = lambda name: [v for path, v in params.items() if path[-1] == name]
    assert by_name("cls_token") and all(np.std(v) > 0.01 for v in by_name("cls_token") + by_name("mask_token"))
    assert all(np.all(v == 1) for v in by_name("lambda1") + by_name("scale"))
    assert all(np.all(v == 0) for v in by_name("bias"))
