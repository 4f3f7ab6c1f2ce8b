"""mvrag_jax/train/trainable.py: exactly the resampler and the to_k_ip/to_v_ip projections train."""


import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from configs import tiny
from mvrag_jax.models.random_params import host_random_params
from mvrag_jax.convert.keys import torch_key_to_module_path
from mvrag_jax.inputs.release import Release
from mvrag_jax.models.unet import UNetConfig, init_params
from mvrag_jax.train.trainable import NoTrainableParamsError, make_optimizer, trainable_labels, trainable_paths
from tests.conftest import TINY_RELEASE

# Where configs/tiny.py puts a SpatialTransformer3D (levels at rates 1, 2, 4; attention at rates 1 and 2).
TINY_TRANSFORMERS = ("input_blocks_1_1", "input_blocks_3_1", "middle_block_1", "output_blocks_2_1",
                     "output_blocks_3_1", "output_blocks_4_1", "output_blocks_5_1")


def _fake_resampler() -> dict:
    """A resampler-shaped subtree: only its top-level name matters for the labels."""
    return {"latents": np.zeros((1, 4, 8), np.float32), "proj_in": {"kernel": np.zeros((6, 8), np.float32),
                                                                    "bias": np.zeros((8,), np.float32)},
            "layers_0_0": {"to_kv": {"kernel": np.zeros((8, 16), np.float32)}}}


RESAMPLER_PATHS = {"resampler/latents", "resampler/proj_in/kernel", "resampler/proj_in/bias",
                   "resampler/layers_0_0/to_kv/kernel"}


@pytest.fixture(scope="module")
def tiny_unet_shapes() -> dict:
    config = UNetConfig.from_config(tiny.get_config())
    return nn.unbox(jax.eval_shape(init_params, config, jax.random.key(0)))


def test_exact_trainable_paths_of_tiny_unet_and_resampler(tiny_unet_shapes):
    params = {"unet": tiny_unet_shapes, "resampler": _fake_resampler()}
    expected = {f"unet/{block}/transformer_blocks_0/attn2/{name}/kernel"
                for block in TINY_TRANSFORMERS for name in ("to_k_ip", "to_v_ip")} | RESAMPLER_PATHS
    assert set(trainable_paths(params)) == expected
    labels = jax.tree.leaves(trainable_labels(params))
    assert labels.count("train") == len(expected) and len(labels) == len(jax.tree.leaves(params))


def test_trainable_unet_paths_are_the_release_ip_keys(tiny_unet_shapes):
    release_ip = {"/".join(("unet",) + module + ("kernel",))
                  for module, _ in map(torch_key_to_module_path, Release.open(TINY_RELEASE).weights("unet"))
                  if module[-1] in ("to_k_ip", "to_v_ip")}
    assert set(trainable_paths({"unet": tiny_unet_shapes})) == release_ip


def test_labels_follow_logically_boxed_trees():
    config = UNetConfig.from_config(tiny.get_config())
    boxed = jax.eval_shape(init_params, config, jax.random.key(0))
    assert trainable_paths(boxed) == trainable_paths(nn.unbox(boxed))
    assert jax.tree.structure(trainable_labels(boxed)) == jax.tree.structure(boxed)


def test_optimizer_updates_only_trainable_params_and_keeps_no_frozen_state():
    config = UNetConfig(image_size=4, in_channels=4, out_channels=4, model_channels=32, num_res_blocks=1,
                        attention_resolutions=(1,), channel_mult=(1,), num_head_channels=16, context_dim=32,
                        camera_dim=16, num_frames=2)
    unet = host_random_params(nn.unbox(jax.eval_shape(init_params, config, jax.random.key(0))))
    params = {"unet": unet, "resampler": _fake_resampler()}
    optimizer = make_optimizer(optax.adam(1e-2), params)
    state = optimizer.init(params)
    grads = jax.tree.map(jnp.ones_like, params)
    updates, _ = jax.jit(optimizer.update)(grads, state, params)
    labels = trainable_labels(params)
    trained = [np.abs(np.asarray(u)).max() for u, label in zip(jax.tree.leaves(updates), jax.tree.leaves(labels))
               if label == "train"]
    frozen = [np.abs(np.asarray(u)).max() for u, label in zip(jax.tree.leaves(updates), jax.tree.leaves(labels))
              if label == "frozen"]
    assert min(trained) > 0 and max(frozen) == 0
    trainable_size = sum(np.size(p) for p, label in zip(jax.tree.leaves(params), jax.tree.leaves(labels))
                         if label == "train")
    state_size = sum(np.size(leaf) for leaf in jax.tree.leaves(state) if np.ndim(leaf) > 0)
    assert state_size == 2 * trainable_size  # Adam moments for the trainable params only


def test_base_unet_without_ip_projections_is_an_error():
    with pytest.raises(NoTrainableParamsError, match="to_k_ip"):
        make_optimizer(optax.adam(1e-3), {"unet": {"input_blocks_0_0": {"kernel": np.zeros((3, 3, 4, 32))}}})
