"""Shared fixtures: the tiny synthetic dataset, built once per test session into a temp dir (a few seconds)."""

import ml_collections as mlc
import pytest

from configs import data
from data_pipelines import build


def tiny_config(data_dir) -> mlc.ConfigDict:
    cfg = data.get_config("size=tiny")
    cfg.data_dir = str(data_dir)
    return cfg


@pytest.fixture(scope="session")
def tiny_data_dir(tmp_path_factory):
    data_dir = tmp_path_factory.mktemp("tiny_data")
    cfg = tiny_config(data_dir)
    build.prepare(cfg, "synthetic_shapes", "multiview")
    build.prepare(cfg, "synthetic_shapes", "classes")
    return data_dir


@pytest.fixture
def tiny_cfg(tiny_data_dir) -> mlc.ConfigDict:
    """A fresh tiny config per test (tests may change it) reading the session's synthetic dataset."""
    return tiny_config(tiny_data_dir)


@pytest.fixture(scope="session", autouse=True)
def parsed_absl_flags():
    """grain reads absl flags when it starts worker processes; pytest never parses them (absl.app.run would)."""
    from absl import flags
    if not flags.FLAGS.is_parsed():
        flags.FLAGS.mark_as_parsed()
