"""models/inception.py: the resize matrices, pooling rules, shapes; conversion checks every key (eval/encoders.py)."""

import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mvrag_jax.convert.keys import CheckpointKeyError
from mvrag_jax.eval.encoders import EncoderError, load_fid_inception
from mvrag_jax.models import inception
from mvrag_jax.inputs.release import write_safetensors
from tests.eval.tiny_models import WIDTH_DIVISOR, inception_state_dict


def test_bilinear_weights_match_torch_rules():
    # upsampling 2 -> 4 (align_corners=False): sources -0.25 (clamped to 0), 0.25, 0.75, 1.25 (upper tap clamped)
    np.testing.assert_allclose(inception.bilinear_weights(2, 4),
                               [[1, 0], [0.75, 0.25], [0.25, 0.75], [0, 1]], atol=1e-7)
    # downsampling 4 -> 2 without antialias: sources 0.5 and 2.5, two taps each
    np.testing.assert_allclose(inception.bilinear_weights(4, 2), [[.5, .5, 0, 0], [0, 0, .5, .5]], atol=1e-7)
    assert np.allclose(inception.bilinear_weights(299, 299), np.eye(299))


def test_average_pool_ignores_padding():
    x = jnp.ones((1, 3, 3, 1))
    np.testing.assert_allclose(inception.avg_pool_3x3_same(x), np.ones((1, 3, 3, 1)), atol=1e-7)  # not 4/9 at corners


def test_conversion_maps_every_key(tmp_path):
    state_dict = inception_state_dict()
    path = tmp_path / "inc.safetensors"
    write_safetensors(path, state_dict)
    config, params = load_fid_inception(path, image_size=75)
    assert config == inception.InceptionConfig(width_divisor=WIDTH_DIVISOR, num_classes=1008, image_size=75)
    weights = [k for k in state_dict if not k.endswith("num_batches_tracked")]
    assert len(jax.tree.leaves(params)) == len(weights) > 370  # every weight landed, counters were dropped
    np.testing.assert_array_equal(params["fc"]["kernel"], state_dict["fc.weight"].T)
    np.testing.assert_array_equal(params["Mixed_7c"]["branch_pool"]["bn"]["running_var"],
                                  state_dict["Mixed_7c.branch_pool.bn.running_var"])
    conv = state_dict["Mixed_6b.branch7x7_2.conv.weight"]  # OIHW [8, 8, 1, 7] -> HWIO
    np.testing.assert_array_equal(params["Mixed_6b"]["branch7x7_2"]["conv"]["kernel"], conv.transpose(2, 3, 1, 0))


@pytest.mark.parametrize("change, message", [
    (lambda sd: sd.pop("Mixed_5b.branch1x1.bn.running_mean"), "missing \\(1\\): Mixed_5b.branch1x1.bn.running_mean"),
    (lambda sd: sd.update({"AuxLogits.fc.weight": np.zeros((1008, 48), np.float32)}), "unexpected \\(1\\)"),
])
def test_conversion_rejects_missing_and_unexpected_keys(tmp_path, change, message):
    state_dict = inception_state_dict()
    change(state_dict)
    write_safetensors(tmp_path / "inc.safetensors", state_dict)
    with pytest.raises(CheckpointKeyError, match=message):
        load_fid_inception(tmp_path / "inc.safetensors")


def test_torch_file_gets_the_conversion_command(tmp_path):
    (tmp_path / "pt_inception.pth").write_bytes(b"x")
    with pytest.raises(EncoderError, match="safetensors.torch"):
        load_fid_inception(tmp_path / "pt_inception.pth")


def test_feature_shapes_at_the_smallest_input():
    config = inception.InceptionConfig(width_divisor=16, image_size=75)
    shapes = jax.eval_shape(inception.init_params, config, jax.random.key(0))
    images = jax.ShapeDtypeStruct((2, 40, 50, 3), jnp.float32)
    pool3, logits = jax.eval_shape(inception.features, config, shapes, images)
    assert pool3.shape == (2, 2048 // 16) and logits.shape == (2, 1008)


def test_features_match_torch_fixture(tmp_path):
    """Flax port vs a PyTorch build of pytorch-fid's FID Inception (tests/eval/make_inception_fixture.py) on the
    same tiny random weights: layout transforms, padding, pooling rules, branch order and the 299 px resize."""
    fixture = np.load(pathlib.Path(__file__).parents[1] / "eval" / "tiny_inception_features.npz")
    write_safetensors(tmp_path / "inc.safetensors", inception_state_dict())
    config, params = load_fid_inception(tmp_path / "inc.safetensors")
    pool3, logits = inception.features(config, params, jnp.asarray(fixture["inputs"]))
    scale = np.abs(fixture["pool3"]).max()
    np.testing.assert_allclose(pool3, fixture["pool3"], atol=1e-4 * scale, rtol=1e-4)
    np.testing.assert_allclose(logits, fixture["logits"], atol=1e-4 * np.abs(fixture["logits"]).max(), rtol=1e-4)
