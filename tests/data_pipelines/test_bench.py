"""The loader benchmark runs per mode and reports examples per second."""

import pytest

from data_pipelines import bench


def test_bench_reports_each_mode(tiny_cfg):
    for mode in ("3d", "2d"):
        result = bench.bench(tiny_cfg, mode, steps=2, warmup=1)
        assert result["mode"] == mode and result["examples_per_s"] > 0 and result["batch_size"] == 4
    with pytest.raises(ValueError, match="choose one of"):
        bench.bench(tiny_cfg, "4d")
