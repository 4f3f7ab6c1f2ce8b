"""mvrag_jax/models/clip.py: parity of both CLIP towers with the official outputs, sizes from releases and configs,
key normalisation of older checkpoints, masking, dtypes and sharding names."""

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
from mvrag_jax.convert.components import COMPONENTS_BY_NAME, convert_component
from mvrag_jax.convert.keys import CheckpointKeyError, state_dict_to_params
from mvrag_jax.inputs.release import Release
from mvrag_jax.models import clip
from mvrag_jax.sharding import DEFAULT_RULES, abstract_state, make_mesh
from mvrag_jax.verify import COMPONENT_TOL, compare, run_case
from tests.conftest import CASES, REFERENCE, TINY_RELEASE, load_case


@pytest.fixture(scope="module")
def clip_vision_case() -> dict[str, np.ndarray]:
    return load_case("clip_vision")


@pytest.mark.parametrize("case, arrays", [
    ("clip_text", {"input_ids", "uncond_input_ids", "last_hidden_state", "uncond_last_hidden_state",
                   "encode_prompt_embeds"}),
    ("clip_vision", {"hidden_states_m2", "last_hidden_state", "pooler_output", "all_hidden_states",
                     "pipe_transformed_uint8_violations", "pipe_pixel_values", "pipe_hidden_states_m2"}),
])
def test_matches_official_towers_on_reference_case(release_models, case, arrays):
    result = run_case(case, release_models, CASES)
    assert result.status == "pass", result.details
    assert set(result.details) == arrays


@pytest.mark.parametrize("config_class, init, manifest, total", [
    (clip.CLIPTextConfig, clip.init_text_params, "clip_text.json", 340_387_840),
    (clip.CLIPVisionConfig, clip.init_vision_params, "clip_vision.json", 630_766_080),
])
def test_full_size_parameter_count_matches_release_manifest(config_class, init, manifest, total):
    config = config_class.from_config(mvrag_sd21.get_config())
    shapes = nn.unbox(jax.eval_shape(init, config, jax.random.key(0)))
    count = sum(leaf.size for leaf in jax.tree.leaves(shapes))
    assert count == total == json.loads((REFERENCE / "manifests" / manifest).read_text())["total_parameters"]


@pytest.mark.parametrize("name, config_class", [("clip_text", clip.CLIPTextConfig),
                                                ("clip_vision", clip.CLIPVisionConfig)])
def test_tiny_config_matches_tiny_release(name, config_class):
    assert config_class.from_release(Release.open(TINY_RELEASE)) == config_class.from_config(tiny.get_config())


def test_dtype_comes_from_runtime_config():
    cfg = tiny.get_config()
    cfg.runtime.dtype = "bfloat16"
    assert clip.CLIPTextConfig.from_config(cfg).dtype == "bfloat16"
    assert clip.CLIPVisionConfig.from_config(cfg).dtype == "bfloat16"


def _release_with(tmp_path: pathlib.Path, folder: str, config: dict | None) -> Release:
    (tmp_path / folder).mkdir(parents=True)
    shutil.copy(TINY_RELEASE / "model_index.json", tmp_path)
    if config is not None:
        (tmp_path / folder / "config.json").write_text(json.dumps(config))
    return Release.open(tmp_path)


def test_full_clip_model_config_and_list_sizes_are_read(tmp_path):
    """A CLIPModel config.json nests the tower under vision_config, and transformers allows [s, s] sizes."""
    tower = json.loads((TINY_RELEASE / "image_encoder" / "config.json").read_text())
    tower.update(image_size=[32, 32], patch_size=[8, 8])
    release = _release_with(tmp_path, "image_encoder", {"model_type": "clip", "vision_config": tower})
    assert clip.CLIPVisionConfig.from_release(release) == clip.CLIPVisionConfig.from_config(tiny.get_config())


def test_absent_fields_take_transformers_defaults(tmp_path):
    """transformers saves only non-default fields; an absent hidden_act means quick_gelu (OpenAI CLIP)."""
    values = json.loads((TINY_RELEASE / "text_encoder" / "config.json").read_text())
    del values["hidden_act"], values["max_position_embeddings"]
    config = clip.CLIPTextConfig.from_release(_release_with(tmp_path, "text_encoder", values))
    assert (config.hidden_act, config.max_position_embeddings, config.hidden_size) == ("quick_gelu", 77, 32)


def test_missing_config_json_is_an_error_naming_the_fix(tmp_path):
    with pytest.raises(clip.CLIPConfigError, match="no config.json.*copy config.json"):
        clip.CLIPTextConfig.from_release(_release_with(tmp_path, "text_encoder", None))


@pytest.mark.parametrize("changes, message", [
    ({"hidden_act": "relu"}, "hidden_act='relu'"),
    ({"num_attention_heads": 5}, "not divisible by num_attention_heads=5"),
    ({"dtype": "float16"}, "dtype 'float16' is not supported"),
    ({"patch_size": 7}, "not a multiple of patch_size=7"),
    ({"hidden_size": 0}, "positive integers"),
])
def test_invalid_vision_configs_are_rejected(changes, message):
    base = clip.CLIPVisionConfig.from_config(tiny.get_config())
    with pytest.raises(clip.CLIPConfigError, match=message):
        dataclasses.replace(base, **changes)


@pytest.mark.parametrize("name, prefix", [("clip_text", "text_model."), ("clip_vision", "vision_model.")])
def test_older_checkpoints_with_prefix_and_position_ids_convert_identically(name, prefix):
    """transformers < 5 saved `text_model.`/`vision_model.` prefixes and an `embeddings.position_ids` buffer."""
    release = Release.open(TINY_RELEASE)
    component = COMPONENTS_BY_NAME[name]
    config, params = convert_component(release, component)
    state_dict = {prefix + key: value for key, value in release.weights(name).items()}
    positions = config.max_position_embeddings if name == "clip_text" else config.num_positions
    state_dict[prefix + "embeddings.position_ids"] = np.arange(positions)[None]
    normalized = component.normalize_keys(state_dict)
    assert set(normalized) == set(release.weights(name))
    abstract = nn.unbox(jax.eval_shape(component.init_params, config, jax.random.key(0)))
    old = state_dict_to_params(normalized, abstract, component=name)
    jax.tree.map(np.testing.assert_array_equal, old, params)


def test_key_mismatch_names_keys_and_hint():
    release = Release.open(TINY_RELEASE)
    component = COMPONENTS_BY_NAME["clip_vision"]
    config = component.config_class.from_release(release)
    state_dict = dict(release.weights("clip_vision"))
    del state_dict["pre_layrnorm.weight"]
    state_dict["visual_projection.weight"] = np.zeros((32, 48), np.float32)
    abstract = nn.unbox(jax.eval_shape(component.init_params, config, jax.random.key(0)))
    with pytest.raises(CheckpointKeyError) as error:
        state_dict_to_params(state_dict, abstract, component="clip_vision", hint=component.hint)
    message = str(error.value)
    assert "missing (1): pre_layrnorm.weight" in message
    assert "unexpected (1): visual_projection.weight" in message
    assert "CLIPVisionModelWithProjection" in message


def test_text_encoder_is_causal(release_models):
    """Token i attends only to tokens <= i: changing token 5 leaves positions 0..4 untouched and changes 5.."""
    config, params = release_models.get("clip_text")
    ids = np.array([[572, 320, 541, 85, 72, 77, 83, 551, 573] + [0] * 68], np.int32)  # [1, 77]
    changed = ids.copy()
    changed[0, 5] = 300
    encode = jax.jit(clip.encode_text)
    a, b = np.asarray(encode(config, params, ids)), np.asarray(encode(config, params, changed))
    np.testing.assert_array_equal(a[:, :5], b[:, :5])
    assert np.all(np.abs(a[:, 5:] - b[:, 5:]).max(axis=-1) > 1e-3)


def test_pixel_shape_mismatch_names_the_layout(release_models):
    config, params = release_models.get("clip_vision")
    with pytest.raises(clip.CLIPConfigError, match=r"expects \[b, 32, 32, 3\] \(NHWC\)"):
        clip.encode_images(config, params, jnp.zeros((1, 3, 32, 32)))


def test_image_features_are_the_penultimate_hidden_state(release_models, clip_vision_case):
    config, params = release_models.get("clip_vision")
    pixels = np.transpose(clip_vision_case["pixel_values"], (0, 2, 3, 1))
    with jax.default_matmul_precision("highest"):
        features = jax.jit(clip.image_features)(config, params, pixels)
    ok, err = compare(features, clip_vision_case["hidden_states_m2"], COMPONENT_TOL)
    assert ok, err


def test_bfloat16_compute_keeps_float32_params_and_stays_close(release_models, clip_vision_case):
    config, params = release_models.get("clip_vision")
    bf16 = dataclasses.replace(config, dtype="bfloat16")
    pixels = np.transpose(clip_vision_case["pixel_values"], (0, 2, 3, 1))
    out = jax.jit(clip.encode_images)(bf16, params, pixels)
    assert out.hidden_states[-2].dtype == jnp.bfloat16
    fresh = nn.unbox(jax.eval_shape(clip.init_vision_params, bf16, jax.random.key(0)))
    assert {leaf.dtype for leaf in jax.tree.leaves(fresh)} == {jnp.dtype(jnp.float32)}
    reference = clip_vision_case["hidden_states_m2"]
    error = np.abs(np.asarray(out.hidden_states[-2], np.float32) - reference).max()
    assert 0 < error < 0.1 * np.abs(reference).max()


@pytest.mark.parametrize("config_class, init", [(clip.CLIPTextConfig, clip.init_text_params),
                                                (clip.CLIPVisionConfig, clip.init_vision_params)])
def test_every_param_has_logical_axis_names(config_class, init):
    config = config_class.from_config(tiny.get_config())
    specs = nn.get_partition_spec(jax.eval_shape(init, config, jax.random.key(0)))
    flat = {jax.tree_util.keystr(path): spec for path, spec in
            jax.tree_util.tree_leaves_with_path(specs, is_leaf=lambda x: isinstance(x, jax.sharding.PartitionSpec))}
    kernels = [path for path in flat if "kernel" in path]
    assert len(kernels) == 6 * config.num_hidden_layers + (config_class is clip.CLIPVisionConfig)  # + patch conv
    for path, spec in flat.items():
        named = spec[-2:] if "kernel" in path else spec  # conv kernels leave their spatial taps unnamed
        assert len(spec) >= 1 and None not in named, (path, spec)
        nn.logical_to_mesh_axes(spec, DEFAULT_RULES)  # raises if a logical name is unknown or repeated
    shapes, shardings = abstract_state(lambda rng: init(config, rng), make_mesh(), DEFAULT_RULES, jax.random.key(0))
    assert jax.tree.structure(shapes) == jax.tree.structure(shardings)
