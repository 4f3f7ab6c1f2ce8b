"""mvrag_jax/convert/single_file.py: .safetensors without torch, pickles only through torch (the optional extra),
and one error naming the fix otherwise."""

import importlib.util

import numpy as np
import pytest

from mvrag_jax.convert.keys import flatten
from mvrag_jax.convert.ldm_sources import load_source
from mvrag_jax.convert.single_file import SingleFileError, read_state_dict
from mvrag_jax.inputs.release import read_safetensors
from tests.conftest import MVDREAM_FILE, MVDREAM_YAML

HAS_TORCH = importlib.util.find_spec("torch") is not None


def test_safetensors_are_read_as_stored():
    state = read_state_dict(MVDREAM_FILE)
    assert state.keys() == read_safetensors(MVDREAM_FILE).keys()
    assert state["model.diffusion_model.time_embed.0.weight"].dtype == np.float16  # conversion casts, not reading
    assert state["betas"].dtype == np.float32


def test_unknown_or_missing_files_name_the_fix(tmp_path):
    with pytest.raises(SingleFileError, match="does not exist"):
        read_state_dict(tmp_path / "nope.pt")
    (tmp_path / "weights.npz").write_bytes(b"")
    with pytest.raises(SingleFileError, match="unknown checkpoint format '.npz'"):
        read_state_dict(tmp_path / "weights.npz")


@pytest.mark.skipif(HAS_TORCH, reason="torch is installed: the pickle is read (tested below)")
def test_a_pickle_without_torch_names_the_extra(tmp_path):
    (tmp_path / "sd-v2.1-base-4view.pt").write_bytes(b"not read")
    with pytest.raises(SingleFileError, match=r"needs torch.*\.\[torch\].*OUT\.safetensors"):
        read_state_dict(tmp_path / "sd-v2.1-base-4view.pt")


@pytest.mark.skipif(not HAS_TORCH, reason="needs the optional torch extra")
def test_a_pickle_with_torch_gives_the_same_params(tmp_path, ldm_sources):
    import torch
    torch.save({k: torch.from_numpy(np.array(v)) for k, v in read_safetensors(MVDREAM_FILE).items()},
               tmp_path / "mvdream.pt")
    converted = load_source(tmp_path / "mvdream.pt", "mvdream", MVDREAM_YAML)
    for name, tree in ldm_sources["mvdream"].params.items():
        for path, value in flatten(tree).items():
            np.testing.assert_array_equal(flatten(converted.params[name])[path], value)
