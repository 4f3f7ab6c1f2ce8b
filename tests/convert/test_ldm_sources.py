"""mvrag_jax/convert/ldm_sources.py: the official MVDream / ImageDream single files and their
diffusers ports -> our components; every mismatch is one error naming the keys and the likely cause."""

import json
import shutil

import numpy as np
import pytest

from mvrag_jax.convert import ldm_keys
from mvrag_jax.convert.components import COMPONENTS_BY_NAME, abstract_params
from mvrag_jax.convert.keys import CheckpointKeyError, flatten, flax_path_to_torch_key, params_to_state_dict
from mvrag_jax.convert.ldm_sources import SD21_CONFIGS, SourceError, load_source, resampler_config
from mvrag_jax.models import resampler
from mvrag_jax.models.unet import UNetConfig
from mvrag_jax.inputs.release import read_safetensors, write_safetensors
from tests.conftest import IMAGEDREAM_FILE, IMAGEDREAM_YAML, MVDREAM_FILE, MVDREAM_YAML, TINY_RELEASE

def test_mvdream_gives_the_frozen_parts_with_sizes_from_its_yaml(ldm_sources):
    mv = ldm_sources["mvdream"]
    assert sorted(mv.configs) == ["clip_text", "unet", "vae"]
    unet = mv.configs["unet"]
    assert (unet.model_channels, unet.channel_mult, unet.attention_resolutions, unet.num_head_channels,
            unet.context_dim, unet.camera_dim, unet.image_branch) == (32, (1, 1), (1, 2), 16, 64, 16, False)
    text = mv.configs["clip_text"]
    # 3 OpenCLIP resblocks, layer "penultimate": the last one never runs, so 2 CLIPTextModel layers; heads = 64/64.
    assert (text.num_hidden_layers, text.hidden_size, text.num_attention_heads, text.intermediate_size,
            text.vocab_size, text.hidden_act) == (2, 64, 1, 256, 574, "gelu")
    assert mv.configs["vae"].block_out_channels == (32, 32) and mv.configs["vae"].scaling_factor == 0.18215


def test_mvdream_values_are_the_files_tensors_in_float32(ldm_sources):
    raw = read_safetensors(MVDREAM_FILE)
    params = ldm_sources["mvdream"].params
    key = "model.diffusion_model.input_blocks.1.1.transformer_blocks.0.attn2.to_k.weight"
    np.testing.assert_array_equal(
        params["unet"]["input_blocks_1_1"]["transformer_blocks_0"]["attn2"]["to_k"]["kernel"],
        raw[key].astype(np.float32).T)
    fused = raw["cond_stage_model.model.transformer.resblocks.1.attn.in_proj_weight"].astype(np.float32)
    layer = params["clip_text"]["encoder"]["layers_1"]["self_attn"]
    np.testing.assert_array_equal(layer["v_proj"]["kernel"], fused[128:].T)
    mid = params["vae"]["decoder"]["mid_block"]["attentions_0"]["to_q"]["kernel"]  # ldm 1x1 conv -> Linear
    np.testing.assert_array_equal(mid, raw["first_stage_model.decoder.mid.attn_1.q.weight"][:, :, 0, 0]
                                  .astype(np.float32).T)
    assert all(v.dtype == np.float32 for tree in params.values() for v in flatten(tree).values())


def test_imagedream_gives_the_image_branch_and_its_resampler(ldm_sources):
    ip = ldm_sources["imagedream"]
    assert sorted(ip.configs) == ["resampler", "unet"] and ip.configs["unet"].image_branch
    res = ip.configs["resampler"]
    assert (res.dim, res.depth, res.heads, res.dim_head, res.num_queries, res.embedding_dim, res.output_dim,
            res.ff_mult) == (64, 2, 2, 64, 4, 48, 64, 4)
    raw = read_safetensors(IMAGEDREAM_FILE)
    np.testing.assert_array_equal(ip.params["resampler"]["latents"],
                                  raw["model.diffusion_model.image_embed.latents"].astype(np.float32))
    attn2 = ip.params["unet"]["output_blocks_2_1"]["transformer_blocks_0"]["attn2"]
    np.testing.assert_array_equal(attn2["to_v_ip"]["kernel"], raw[
        "model.diffusion_model.output_blocks.2.1.transformer_blocks.0.attn2.to_v_ip.weight"].astype(np.float32).T)


def test_imagedreams_hard_coded_resampler_is_mvrags_full_size_resampler():
    """ImageDream builds Resampler(dim=1024, depth=4, dim_head=64, heads=12, num_queries=16, embedding_dim=1280,
    output_dim=1024, ff_mult=4): from its tensor shapes we recover exactly MV-RAG's full-size ResamplerConfig."""
    full = resampler.ResamplerConfig()
    shapes = {flax_path_to_torch_key(path): tuple(reversed(s.shape)) if path[-1] == "kernel" else s.shape
              for path, s in flatten(abstract_params(COMPONENTS_BY_NAME["resampler"], full)).items()}
    state = {key: np.broadcast_to(np.float32(0), shape) for key, shape in shapes.items()}  # shapes only, no memory
    assert resampler_config(state, "ImageDream") == full


def test_default_configs_are_the_released_sd21_sizes():
    unet = UNetConfig.from_kwargs(SD21_CONFIGS["mvdream"]["unet_config"]["params"], False)
    assert (unet.model_channels, unet.channel_mult, unet.attention_resolutions, unet.num_head_channels,
            unet.context_dim, unet.camera_dim) == (320, (1, 2, 4, 4), (4, 2, 1), 64, 1024, 16)
    assert SD21_CONFIGS["imagedream"]["unet_config"]["params"]["ip_dim"] == resampler.ResamplerConfig().num_queries


def _tampered(tmp_path, source=MVDREAM_FILE, drop=(), add=None, reshape=()):
    tensors = dict(read_safetensors(source))
    for key in drop:
        del tensors[key]
    tensors.update(add or {})
    for key in reshape:
        tensors[key] = np.zeros(tensors[key].shape[:-1] + (tensors[key].shape[-1] + 1,), tensors[key].dtype)
    path = tmp_path / source.name
    write_safetensors(path, tensors)
    return path


def test_missing_unexpected_and_misshapen_keys_are_one_error(tmp_path):
    unet = "model.diffusion_model."
    path = _tampered(tmp_path, drop=[unet + "out.2.bias"],
                     add={unet + "input_blocks.1.1.transformer_blocks.0.attn2.extra.weight": np.zeros(2, np.float16)},
                     reshape=[unet + "time_embed.0.weight"])
    with pytest.raises(CheckpointKeyError) as error:
        load_source(path, "mvdream", MVDREAM_YAML)
    message = str(error.value)
    assert "missing (1): out.2.bias" in message
    assert "unexpected (1): input_blocks.1.1.transformer_blocks.0.attn2.extra.weight" in message
    assert "wrong shape (1): time_embed.0.weight (128, 33) (model expects (128, 32))" in message
    assert "hint:" in message


def test_swapped_checkpoints_name_the_swap(tmp_path):
    with pytest.raises(CheckpointKeyError, match="ImageDream checkpoint as --mvdream"):
        load_source(IMAGEDREAM_FILE, "mvdream", MVDREAM_YAML)
    with pytest.raises(CheckpointKeyError, match="MVDream checkpoint as --imagedream"):
        load_source(MVDREAM_FILE, "imagedream", IMAGEDREAM_YAML)


def test_a_key_outside_the_layout_is_an_error(tmp_path):
    path = _tampered(tmp_path, add={"model_ema.decay": np.zeros((), np.float32)})
    with pytest.raises(CheckpointKeyError, match=r"keys outside the mvdream layout.*model_ema\.decay"):
        load_source(path, "mvdream", MVDREAM_YAML)


def test_a_yaml_that_does_not_match_the_file_is_a_key_error(tmp_path):
    yaml_path = tmp_path / "wrong.yaml"
    yaml_path.write_text(MVDREAM_YAML.read_text().replace("model_channels: 32", "model_channels: 64"))
    with pytest.raises(CheckpointKeyError, match="wrong shape"):
        load_source(MVDREAM_FILE, "mvdream", yaml_path)
    yaml_path.write_text("model: {}\n")
    with pytest.raises(SourceError, match="not an official mvdream config"):
        load_source(MVDREAM_FILE, "mvdream", yaml_path)


def write_port(source, model: str, dst):
    """A tiny diffusers port in ashawkey's layout: unet/ = the ldm UNet keys without `model.diffusion_model.` (his
    convert script's rule) incl. image_embed.*, config.json = the YAML's unet kwargs; vae/ and text_encoder/ in the
    diffusers/transformers layout (our export, bit-exact to the official layout); image_encoder/ from the release."""
    raw = read_safetensors({"mvdream": MVDREAM_FILE, "imagedream": IMAGEDREAM_FILE}[model])
    (dst / "unet").mkdir(parents=True)
    write_safetensors(dst / "unet" / "diffusion_pytorch_model.safetensors",
                      {k[len(ldm_keys.UNET_PREFIX):]: v for k, v in raw.items() if k.startswith(ldm_keys.UNET_PREFIX)})
    yaml_path = {"mvdream": MVDREAM_YAML, "imagedream": IMAGEDREAM_YAML}[model]
    import yaml
    kwargs = yaml.safe_load(yaml_path.read_text())["model"]["params"]["unet_config"]["params"]
    for key in ("legacy", "use_linear_in_transformer", "use_spatial_transformer", "ip_mode", "with_ip"):
        kwargs.pop(key, None)
    (dst / "unet" / "config.json").write_text(json.dumps({"_class_name": "MultiViewUNetModel", **kwargs}))
    (dst / "model_index.json").write_text(json.dumps({"_class_name": "MVDreamPipeline"}))
    if model == "mvdream":
        from mvrag_jax.convert.init_checkpoint import _text_json, _vae_json
        for name, folder, to_json, file in (("vae", "vae", _vae_json, "diffusion_pytorch_model.safetensors"),
                                            ("clip_text", "text_encoder", _text_json, "model.safetensors")):
            (dst / folder).mkdir()
            write_safetensors(dst / folder / file, params_to_state_dict(source.params[name]))
            (dst / folder / "config.json").write_text(json.dumps(to_json(source.configs[name])))
        shutil.copytree(TINY_RELEASE / "tokenizer", dst / "tokenizer")
        shutil.copytree(TINY_RELEASE / "scheduler", dst / "scheduler")
    else:
        shutil.copytree(TINY_RELEASE / "image_encoder", dst / "image_encoder")
        shutil.copytree(TINY_RELEASE / "feature_extractor", dst / "feature_extractor")
    return dst


@pytest.mark.parametrize("model", ["mvdream", "imagedream"])
def test_a_diffusers_port_converts_to_the_single_files_params(tmp_path, ldm_sources, model):
    port = load_source(write_port(ldm_sources[model], model, tmp_path / "port"), model)
    single = ldm_sources[model]
    assert set(port.configs) == set(single.configs) | ({"clip_vision"} if model == "imagedream" else set())
    for name in single.configs:
        assert port.configs[name] == single.configs[name], name
        ours, theirs = flatten(port.params[name]), flatten(single.params[name])
        assert ours.keys() == theirs.keys()
        for path, value in theirs.items():
            np.testing.assert_array_equal(ours[path], value, err_msg=f"{name}/{path}")
    assert ("tokenizer/merges.txt" in port.files) == (model == "mvdream")
