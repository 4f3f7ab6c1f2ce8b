"""mvrag_jax/convert/init_checkpoint.py: `mvrag convert --mvdream A --imagedream B --release R` -> one init
checkpoint (paper C.2) that `--config.train.init` trains from with ImageDream's adapters, not fresh ones."""

import dataclasses
import json

import jax
import numpy as np
import pytest

from mvrag_jax import cli
from mvrag_jax.convert import convert_release, export_checkpoint, load_model_checkpoint
from mvrag_jax.convert.components import COMPONENTS_BY_NAME, convert_component
from mvrag_jax.convert.init_checkpoint import ADAPTER_MODULES, check_sizes, merge_unet
from mvrag_jax.convert.keys import flatten
from mvrag_jax.convert.ldm_sources import Converted, SourceError
from mvrag_jax.models import clip, vae
from mvrag_jax.inputs.release import Release
from tests.conftest import IMAGEDREAM_FILE, IMAGEDREAM_YAML, MVDREAM_FILE, MVDREAM_YAML, TINY_RELEASE


def _equal(ours, theirs, what):
    ours, theirs = flatten(ours), flatten(theirs)
    assert ours.keys() == theirs.keys(), what
    for path, value in theirs.items():
        np.testing.assert_array_equal(ours[path], value, err_msg=f"{what}/{'/'.join(path)}")


@pytest.fixture(scope="module")
def init(init_ckpt):
    return load_model_checkpoint(init_ckpt)


def test_frozen_parts_from_mvdream_adapters_from_imagedream(init, ldm_sources):
    configs, params = init
    mv, ip = ldm_sources["mvdream"], ldm_sources["imagedream"]
    assert sorted(params) == ["clip_text", "clip_vision", "dinov2", "resampler", "unet", "vae"]
    assert configs["unet"] == dataclasses.replace(mv.configs["unet"], image_branch=True)
    unet, mv_unet, ip_unet = flatten(params["unet"]), flatten(mv.params["unet"]), flatten(ip.params["unet"])
    adapters = {path for path in unet if path[-2] in ADAPTER_MODULES}
    assert len(adapters) == 2 * 7  # to_k_ip + to_v_ip in the 7 transformer blocks (2 input, middle, 4 output)
    assert set(unet) - adapters == set(mv_unet)
    for path, value in unet.items():
        np.testing.assert_array_equal(value, (ip_unet if path in adapters else mv_unet)[path], err_msg=str(path))
    _equal(params["resampler"], ip.params["resampler"], "resampler")
    for name in ("vae", "clip_text"):
        _equal(params[name], mv.params[name], name)
    for name in ("clip_vision", "dinov2"):  # from --release
        _equal(params[name], convert_component(Release.open(TINY_RELEASE), COMPONENTS_BY_NAME[name])[1], name)


def test_release_files_describe_the_converted_weights(init_ckpt, init):
    configs, _ = init
    files = Release.open(init_ckpt / "release_files")
    assert clip.CLIPTextConfig.from_release(files) == configs["clip_text"]
    assert vae.VAEConfig.from_release(files) == configs["vae"]
    res = json.loads((init_ckpt / "release_files" / "resampler" / "config.json").read_text())
    assert {k: res[k] for k in ("dim", "depth", "heads", "dim_head", "num_queries")} == {
        "dim": 64, "depth": 2, "heads": 2, "dim_head": 64, "num_queries": 4}
    # The tokenizer ids of the release's text config stay; its sizes are the converted tower's.
    text = json.loads((init_ckpt / "release_files" / "text_encoder" / "config.json").read_text())
    assert text["eos_token_id"] == 573 and text["hidden_size"] == 64
    assert (init_ckpt / "release_files" / "tokenizer" / "vocab.json").is_file()


def test_export_then_convert_gives_the_init_back(init_ckpt, init, tmp_path):
    exported = export_checkpoint(init_ckpt, tmp_path / "release")
    configs, params = load_model_checkpoint(convert_release(exported, tmp_path / "again", show_progress=False))
    for name in params:
        assert configs[name] == init[0][name], name
        _equal(params[name], init[1][name], name)


def test_trainer_starts_from_imagedreams_adapters(init_ckpt, ldm_sources):
    """`--config.train.init CKPT`: the trainer's initial trainable params are ImageDream's resampler and
    to_k_ip/to_v_ip (not re-initialised: no copy of to_k, no fresh resampler)."""
    from tests.train.test_step import host_tree, micro_config
    from mvrag_jax.train.trainer import make_mesh, make_trainer
    cfg = micro_config(init=str(init_ckpt))
    trainer = make_trainer(cfg, make_mesh(cfg, jax.devices()[:1]))
    trainable = host_tree(trainer.init(jax.random.key(0)).trainable)
    ip = ldm_sources["imagedream"]
    expected = {f"resampler/{'/'.join(p)}": v for p, v in flatten(ip.params["resampler"]).items()}
    expected |= {f"unet/{'/'.join(p)}": v for p, v in flatten(ip.params["unet"]).items() if p[-2] in ADAPTER_MODULES}
    assert trainable.keys() == expected.keys()
    for key, value in expected.items():
        np.testing.assert_array_equal(trainable[key], value, err_msg=key)
    to_k = flatten(ip.params["unet"])[("input_blocks_1_1", "transformer_blocks_0", "attn2", "to_k", "kernel")]
    assert not np.array_equal(trainable["unet/input_blocks_1_1/transformer_blocks_0/attn2/to_k_ip/kernel"], to_k)


def test_unets_of_different_architectures_do_not_merge(ldm_sources):
    mv, ip = ldm_sources["mvdream"], ldm_sources["imagedream"]
    other = Converted({**ip.configs, "unet": dataclasses.replace(ip.configs["unet"], num_head_channels=8)},
                      ip.params)
    with pytest.raises(SourceError, match=r"UNets differ in \{'num_head_channels': \(16, 8\)\}"):
        merge_unet(mv, other)


def test_components_of_different_sizes_are_an_error(init):
    configs = dict(init[0])
    configs["clip_vision"] = dataclasses.replace(configs["clip_vision"], hidden_size=1280)
    with pytest.raises(SourceError, match="clip_vision.hidden_size=1280 but resampler.embedding_dim=48"):
        check_sizes(configs)


def test_cli_converts_and_refuses_adapters_alone(tmp_path, capsys):
    argv = ["mvrag", "convert", "--mvdream", str(MVDREAM_FILE), "--mvdream-config", str(MVDREAM_YAML),
            "--imagedream", str(IMAGEDREAM_FILE), "--imagedream-config", str(IMAGEDREAM_YAML),
            "--release", str(TINY_RELEASE), "--out", str(tmp_path / "ckpt")]
    assert cli.main(argv) == 0
    assert load_model_checkpoint(tmp_path / "ckpt")[0]["unet"].image_branch
    assert cli.main(["mvrag", "convert", "--imagedream", str(IMAGEDREAM_FILE), "--out", str(tmp_path / "x")]) == 2
    assert "also pass --mvdream" in capsys.readouterr().err


def test_mvdream_alone_is_a_text_only_base(tmp_path):
    from mvrag_jax.convert import convert_init
    configs, params = load_model_checkpoint(convert_init(MVDREAM_FILE, tmp_path / "base", mvdream_config=MVDREAM_YAML,
                                                         release=TINY_RELEASE))
    assert not configs["unet"].image_branch and "resampler" not in params
    assert not any(p[-2] in ADAPTER_MODULES for p in flatten(params["unet"]))


def test_diffusers_ports_alone_give_every_trained_component(tmp_path, ldm_sources):
    """Without --release: the CLIP vision tower from the ImageDream port's image_encoder/, the tokenizer and scheduler
    from the MVDream port; only DINOv2 (inference) is absent."""
    from mvrag_jax.convert import convert_init
    from tests.convert.test_ldm_sources import write_port
    ports = {m: write_port(ldm_sources[m], m, tmp_path / m) for m in ("mvdream", "imagedream")}
    ckpt = convert_init(ports["mvdream"], tmp_path / "ckpt", imagedream=ports["imagedream"])
    configs, params = load_model_checkpoint(ckpt)
    assert sorted(params) == ["clip_text", "clip_vision", "resampler", "unet", "vae"]
    _equal(params["clip_vision"], convert_component(Release.open(TINY_RELEASE), COMPONENTS_BY_NAME["clip_vision"])[1],
           "clip_vision")
    assert (ckpt / "release_files" / "tokenizer" / "merges.txt").is_file()
    assert (ckpt / "release_files" / "image_encoder" / "config.json").is_file()
