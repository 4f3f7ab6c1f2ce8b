"""eval/encoders.py: DINOv2 from a dinov2-base folder, a release or a checkpoint gives one model; bad inputs."""

import jax
import numpy as np
import pytest

from mvrag_jax.eval.encoders import EncoderError, load_dinov2, load_encoders
from tests.conftest import TINY_RELEASE
from tests.eval.conftest import TINY_DINOV2


def test_dinov2_sources_agree(tiny_ckpt):
    folder_config, folder_params, processor = load_dinov2(TINY_DINOV2)
    for source in (TINY_RELEASE, tiny_ckpt):
        config, params, other_processor = load_dinov2(source)
        assert config == folder_config and other_processor == processor
        jax.tree.map(np.testing.assert_array_equal, params, folder_params)


def test_bad_sources_name_the_fix(tmp_path):
    with pytest.raises(FileNotFoundError, match="--dinov2"):
        load_dinov2(tmp_path / "nope")
    with pytest.raises(EncoderError, match="no config.json"):
        load_dinov2(tmp_path)
    encoders = load_encoders()
    assert encoders.clip is encoders.dinov2 is encoders.inception is encoders.ir is None
    assert set(encoders.missing) == {"clip", "dinov2", "inception", "ir"}
