"""mvrag_jax/models/unet.py: parity with the official MultiViewUNetModel, sizes, configs, bf16 and remat."""

import dataclasses
import json
import pathlib
import shutil

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import mvrag_sd21, tiny
from mvrag_jax.models.random_params import host_random_params
from mvrag_jax.convert.checkpoint import config_from_dict, config_to_dict
from mvrag_jax.convert.keys import flatten, flax_path_to_torch_key
from mvrag_jax.inputs.release import Release
from mvrag_jax.models.unet import MultiViewUNet, UNetConfig, UNetConfigError, init_params
from mvrag_jax.verify import run_case
from tests.conftest import CASES, REFERENCE, TINY_RELEASE, load_case

# Two levels, attention only at the inner one: every block kind (skip conv, down/upsample, transformer) in ~1 s.
MICRO = UNetConfig(image_size=8, in_channels=4, out_channels=4, model_channels=32, num_res_blocks=1,
                   attention_resolutions=(2,), channel_mult=(1, 2), num_head_channels=16, context_dim=32,
                   camera_dim=16, num_frames=2)


@pytest.fixture(scope="module")
def ip_case() -> dict[str, np.ndarray]:
    return load_case("unet_forward_ip")


@pytest.mark.parametrize("case", ["unet_forward_text", "unet_forward_ip"])
def test_matches_official_unet_on_reference_case(release_models, case):
    result = run_case(case, release_models, CASES)
    assert result.status == "pass", result.details
    assert set(result.details) == {"eps"}


def test_full_size_parameter_count_and_keys_match_release_manifest():
    config = UNetConfig.from_config(mvrag_sd21.get_config())
    shapes = flatten(nn.unbox(jax.eval_shape(init_params, config, jax.random.key(0))))
    assert sum(int(np.prod(leaf.shape)) for leaf in shapes.values()) == 893_131_204
    manifest = json.loads((REFERENCE / "manifests" / "unet.json").read_text())
    expected = {entry["key"]: tuple(entry["shape"]) for entry in manifest["keys"]}
    ours = {flax_path_to_torch_key(path): leaf.shape for path, leaf in shapes.items()}
    assert set(ours) == set(expected)
    # Dense kernels are [in, out] (torch [out, in]); convs HWIO (torch OIHW): compare element counts and ranks.
    assert all(int(np.prod(ours[key])) == int(np.prod(shape)) and len(ours[key]) == len(shape)
               for key, shape in expected.items())


def test_tiny_config_file_matches_tiny_release():
    from_release = UNetConfig.from_release(Release.open(TINY_RELEASE))
    assert from_release == UNetConfig.from_config(tiny.get_config())
    assert from_release.channel_mult == (1, 2, 2) and from_release.attention_resolutions == (2, 1)
    assert from_release.num_frames == 4 and from_release.dtype == "float32" and from_release.remat == "none"
    assert UNetConfig.from_release(Release.open(TINY_RELEASE), num_frames=2).num_frames == 2


def test_config_reads_runtime_block():
    cfg = tiny.get_config("size=medium")
    cfg.runtime.dtype, cfg.runtime.remat, cfg.model.num_frames = "bfloat16", "dots_saveable", 6
    config = UNetConfig.from_config(cfg)
    assert (config.dtype, config.remat, config.num_frames, config.model_channels) == ("bfloat16", "dots_saveable", 6,
                                                                                       64)
    assert config.compute_dtype == jnp.bfloat16


def test_config_json_round_trip_is_hashable():
    config = UNetConfig.from_config(tiny.get_config())
    restored = config_from_dict(UNetConfig, json.loads(json.dumps(config_to_dict(config))))
    assert restored == config and hash(restored) == hash(config)


def _release_with_unet_config(root: pathlib.Path, **changes) -> Release:
    (root / "unet").mkdir(parents=True)
    shutil.copy(TINY_RELEASE / "model_index.json", root)
    values = json.loads((TINY_RELEASE / "unet" / "config.json").read_text())
    values.update(changes)
    (root / "unet" / "config.json").write_text(json.dumps(values))
    return Release.open(root)


def test_release_option_we_do_not_implement_is_an_error(tmp_path):
    release = _release_with_unet_config(tmp_path, use_scale_shift_norm=True)
    with pytest.raises(UNetConfigError, match="use_scale_shift_norm=True"):
        UNetConfig.from_release(release)


def test_release_unknown_keys_are_ignored_like_the_official_kwargs(tmp_path):
    release = _release_with_unet_config(tmp_path, use_checkpoint=True, legacy=False)
    assert UNetConfig.from_release(release).model_channels == 32


@pytest.mark.parametrize("changes, message", [
    ({"dtype": "float16"}, "runtime.dtype"),
    ({"remat": "sometimes"}, "runtime.remat"),
    ({"model_channels": 48}, "GroupNorm"),
    ({"num_head_channels": 24}, "must divide"),
    ({"num_head_channels": -1}, "neither num_heads"),
    ({"num_res_blocks": (1, 1, 1)}, "one entry per level"),
])
def test_inconsistent_config_values_are_errors(changes, message):
    with pytest.raises(UNetConfigError, match=message):
        dataclasses.replace(MICRO, **changes)


def test_unknown_experiment_config_key_is_an_error():
    cfg = tiny.get_config()
    cfg.model.unet.num_head = 3
    with pytest.raises(UNetConfigError, match="unknown keys"):
        UNetConfig.from_config(cfg)


def test_head_conventions_follow_the_official_minus_one_rules():
    assert MICRO.heads(64) == (4, 16)  # num_head_channels fixed: heads grow with width
    by_heads = dataclasses.replace(MICRO, num_head_channels=-1, num_heads=2)
    assert by_heads.heads(32) == (2, 16) and by_heads.heads(64) == (2, 32)  # num_heads fixed: head width grows


def test_per_level_res_blocks_build_the_official_block_layout():
    config = dataclasses.replace(MICRO, num_res_blocks=(1, 2))
    params = nn.unbox(jax.eval_shape(init_params, config, jax.random.key(0)))
    inputs = sorted(name for name in params if name.startswith("input_blocks"))
    # conv_in, level 0: 1 res, downsample; level 1: 2 res + transformer each.
    assert inputs == ["input_blocks_0_0", "input_blocks_1_0", "input_blocks_2_0", "input_blocks_3_0",
                      "input_blocks_3_1", "input_blocks_4_0", "input_blocks_4_1"]
    assert "op" in params["input_blocks_2_0"] and "skip_connection" in params["input_blocks_3_0"]
    outputs = {name for name in params if name.startswith("output_blocks")}
    assert len({name.split("_")[2] for name in outputs}) == (2 + 1) + (1 + 1)  # res_blocks + 1 per level
    assert "conv" in params["output_blocks_2_2"]  # the upsample closes the inner level


def test_batch_not_divisible_by_views_is_an_error():
    x = jnp.zeros((3, 8, 8, 4))
    with pytest.raises(ValueError, match="not a multiple of num_frames=2"):
        jax.eval_shape(MultiViewUNet(MICRO).init, jax.random.key(0), x, jnp.zeros((3,)), jnp.zeros((3, 5, 32)))


def _apply_ip_case(config: UNetConfig, params, case: dict) -> np.ndarray:
    x = np.transpose(case["x"], (0, 2, 3, 1))  # [b * views, h, w, c]
    eps = jax.jit(MultiViewUNet(config).apply)({"params": params}, x, case["timesteps"], case["context"],
                                                case["camera"], case["images_tokens"], case["scale"])
    return np.asarray(eps, np.float32)


def test_bfloat16_activations_stay_close_to_float32(release_models, ip_case):
    config, params = release_models.get("unet")
    with jax.default_matmul_precision("highest"):
        ours = _apply_ip_case(dataclasses.replace(config, dtype="bfloat16"), params, ip_case)
    reference = np.transpose(ip_case["eps"], (0, 2, 3, 1))  # the float32 run matches it (parity test above)
    assert ours.dtype == np.float32 and np.isfinite(ours).all()
    relative = np.linalg.norm(ours - reference) / np.linalg.norm(reference)
    assert relative < 0.05, f"bf16 relative error {relative:.4f} (sanity bound, not parity)"
    assert relative > 0, "bf16 run is bit-identical to fp32: the dtype setting is not reaching the layers"


# One level with attention: the smallest UNet with every block group, for the (compile-heavy) gradient checks.
NANO = dataclasses.replace(MICRO, image_size=4, attention_resolutions=(1,), channel_mult=(1,))


def _nano_inputs(seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    rows = 2 * NANO.num_frames
    return {"x": rng.standard_normal((rows, 4, 4, 4), np.float32),
            "timesteps": np.array([981, 981, 341, 341], np.float32),
            "context": rng.standard_normal((rows, 5, 32), np.float32),
            "camera": rng.standard_normal((rows, 16), np.float32),
            "image_tokens": rng.standard_normal((rows, 3, 32), np.float32),
            "scale": np.float32(0.6)}


def _value_and_grads(config: UNetConfig, params, inputs) -> tuple[np.ndarray, dict]:
    def loss(params):
        eps = MultiViewUNet(config).apply({"params": params}, **inputs)
        return jnp.mean(jnp.square(eps)), eps
    (_, eps), grads = jax.jit(jax.value_and_grad(loss, has_aux=True))(params)
    return np.asarray(eps), jax.tree.map(np.asarray, grads)


def test_remat_policies_give_identical_outputs_and_gradients():
    params = host_random_params(nn.unbox(jax.eval_shape(init_params, NANO, jax.random.key(0))), seed=1)
    inputs = _nano_inputs()
    with jax.default_matmul_precision("highest"):
        eps, grads = _value_and_grads(NANO, params, inputs)
        for remat in ("full", "ordered", "dots_saveable"):
            remat_eps, remat_grads = _value_and_grads(dataclasses.replace(NANO, remat=remat), params, inputs)
            np.testing.assert_allclose(remat_eps, eps, atol=1e-6, rtol=1e-6, err_msg=remat)
            jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=1e-6, rtol=1e-5, err_msg=remat),
                         remat_grads, grads)
    assert np.abs(grads["input_blocks_1_1"]["transformer_blocks_0"]["attn2"]["to_k_ip"]["kernel"]).max() > 0


def _checkpoint_count(config: UNetConfig) -> int:
    """Number of remat (`checkpoint`) regions in the traced forward pass."""
    params = nn.unbox(jax.eval_shape(init_params, config, jax.random.key(0)))
    inputs = _nano_inputs()
    jaxpr = jax.make_jaxpr(lambda p: MultiViewUNet(config).apply({"params": p}, **inputs))(params)
    # checkpoint/remat2: jax.checkpoint (name varies by jax); custom_vjp_call: remat="ordered" (models/remat.py)
    return sum(eqn.primitive.name in ("checkpoint", "remat2", "custom_vjp_call", "custom_vjp_call_jaxpr")
               for eqn in jaxpr.jaxpr.eqns)


def test_remat_wraps_each_unet_block_once():
    blocks = 2 + 1 + 2  # NANO: input_blocks_0/1, middle_block, output_blocks_0/1
    assert _checkpoint_count(NANO) == 0
    assert _checkpoint_count(dataclasses.replace(NANO, remat="full")) == blocks
    assert _checkpoint_count(dataclasses.replace(NANO, remat="dots_saveable")) == blocks
    assert _checkpoint_count(dataclasses.replace(NANO, remat="ordered")) == blocks


def test_2d_objects_attend_within_their_view_and_skip_the_camera():
    """Training's 3D/2D batches: single_view objects behave like num_frames=1 (view 0 ignores views 1..3) and rows
    with camera_mask 0 get no camera embedding; objects without the flags still mix views and read cameras."""
    config = UNetConfig(image_size=8, in_channels=4, out_channels=4, model_channels=32, num_res_blocks=1,
                        attention_resolutions=(1,), channel_mult=(1,), num_head_channels=16, context_dim=32,
                        camera_dim=16, num_frames=4)
    params = host_random_params(nn.unbox(jax.eval_shape(init_params, config, jax.random.key(0))), seed=3)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((8, 8, 8, 4)).astype(np.float32)  # 2 objects x 4 views
    camera = rng.standard_normal((8, 16)).astype(np.float32)
    context = rng.standard_normal((8, 77, 32)).astype(np.float32)
    tokens = rng.standard_normal((8, 4, 32)).astype(np.float32)
    single_view = np.array([False, True])        # object 0: 3D, object 1: 2D
    camera_mask = np.repeat(~single_view, 4).astype(np.float32)
    apply = jax.jit(lambda x, camera: MultiViewUNet(config).apply(
        {"params": params}, x, np.full(8, 500.0, np.float32), context, camera, tokens, 1.0,
        camera_mask=camera_mask, single_view=single_view))
    base = np.asarray(apply(x, camera))
    x_other = x.copy()
    x_other[[1, 2, 3, 5, 6, 7]] += 1.0          # change views 1..3 of both objects
    changed = np.asarray(apply(x_other, camera))
    np.testing.assert_array_equal(changed[4], base[4])  # 2D object: view 0 does not see its other views
    assert np.abs(changed[0] - base[0]).max() > 1e-3     # 3D object: it does
    camera_other = camera + 100.0  # random weights: the camera path is weak, so move it far
    moved = np.asarray(apply(x, camera_other))
    np.testing.assert_array_equal(moved[4:], base[4:])  # camera_mask 0: camera ignored
    assert np.abs(moved[:4] - base[:4]).max() > 1e-6     # (exactly equal would mean ignored here too)
    # Without the flags the UNet is the inference model (parity cases cover it): views mix for every object.
    plain = MultiViewUNet(config).apply({"params": params}, x_other, np.full(8, 500.0, np.float32), context, camera,
                                        tokens, 1.0)
    plain_base = MultiViewUNet(config).apply({"params": params}, x, np.full(8, 500.0, np.float32), context, camera,
                                             tokens, 1.0)
    assert np.abs(np.asarray(plain)[4] - np.asarray(plain_base)[4]).max() > 1e-3
