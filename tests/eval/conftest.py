"""Tiny encoders and a tiny dataset + method output for the eval tests."""

import pathlib

import pytest

from tests.conftest import TINY_RELEASE
from tests.eval.tiny_models import write_dataset, write_tiny_inception, write_views
from tests.retrieval.tiny_clip import write_tiny_clip

TINY_DINOV2 = TINY_RELEASE / "facebook" / "dinov2-base"
MISMATCH = 1  # prompt p1's views get p2's colour: it must rank worst


@pytest.fixture(scope="session")
def eval_inputs(tmp_path_factory) -> dict[str, pathlib.Path]:
    root = tmp_path_factory.mktemp("eval")
    dataset = write_dataset(root / "data", prompts=3)
    return {"dataset": dataset, "views": write_views(root / "views", dataset, mismatch=MISMATCH),
            "clip": write_tiny_clip(root / "clip"), "inception": write_tiny_inception(root),
            "dinov2": TINY_DINOV2}
