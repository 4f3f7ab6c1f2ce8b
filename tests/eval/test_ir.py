"""The GUIE instance-retrieval port (models/guie.py, convert/guie_keys.py, eval/ir.py) against PyTorch: the committed
tiny model's cases (made by make_ir_fixture.py from guie_torch.py) always, and fresh random weights when torch is
installed."""

import json
import pathlib
import shutil

import flax.linen as nn
import jax
import numpy as np
import pytest

from mvrag_jax.convert.keys import CheckpointKeyError
from mvrag_jax.eval import ir
from mvrag_jax.inputs.release import read_safetensors, write_safetensors
from mvrag_jax.models import guie

FIXTURE = pathlib.Path(__file__).parent / "fixtures" / "ir_tiny"
TOL = dict(atol=1e-5, rtol=1e-4)


def _forward(config, params, pixels):
    with jax.default_matmul_precision("float32"):
        return guie.embed(config, params, pixels)


def test_committed_cases_match_pytorch():
    config, params = ir.load_ir(FIXTURE)
    assert config.vision.patch_stride == 4 and config.vision.grid_size == 4 and config.vision.num_positions == 17
    assert (config.projection_dim, config.embedding_dim) == (16, 8)
    cases = np.load(FIXTURE / "cases.npz")
    out = _forward(config, params, cases["pixels"])
    err = {k: float(np.abs(np.asarray(getattr(out, k)) - cases[k]).max()) for k in ("projection", "embedding")}
    np.testing.assert_allclose(out.projection, cases["projection"], **TOL)
    np.testing.assert_allclose(out.embedding, cases["embedding"], **TOL)
    assert max(err.values()) < 1e-5, err


def test_release_defaults_are_the_290_overlap_tower():
    vision = guie.GUIEConfig().vision
    assert (vision.image_size, vision.patch_size, vision.stride, vision.grid_size, vision.num_positions) == \
        (290, 14, 12, 24, 577)
    shapes = nn.unbox(jax.eval_shape(guie.init_params, guie.GUIEConfig(), jax.random.key(0)))
    assert shapes["proj"].shape == (1280, 1024) and shapes["fc1"]["kernel"].shape == (1024, 64)
    assert shapes["backbone"]["embeddings"]["position_embedding"]["embedding"].shape == (577, 1280)


def test_default_stride_and_heads_come_from_the_release(tmp_path):
    # Without config.json, settings the shapes cannot give follow the release's rules: stride = kernel - 2 (the
    # overlap package's conv1; 12 for the release, 4 here, so an 18 px input) and heads = width / 80 (at least 1).
    shutil.copy(FIXTURE / "model.safetensors", tmp_path / "model.safetensors")
    config, _ = ir.load_ir(tmp_path)
    assert (config.vision.patch_stride, config.vision.image_size, config.vision.num_attention_heads) == (4, 18, 1)


def test_bad_weights_name_the_problem(tmp_path):
    sd = read_safetensors(FIXTURE / "model.safetensors")
    del sd["module.backbone.ln_post.weight"]
    write_safetensors(tmp_path / "model.safetensors", sd)
    shutil.copy(FIXTURE / "config.json", tmp_path / "config.json")
    with pytest.raises(CheckpointKeyError, match="backbone.post_layernorm.weight"):
        ir.load_ir(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps({"heads": 2}))
    with pytest.raises(ir.IRWeightsError, match="heads"):
        ir.load_ir(tmp_path)
    with pytest.raises(FileNotFoundError, match="safetensors"):
        ir.load_ir(tmp_path / "nothing")
    (tmp_path / "w.pth").write_bytes(b"x")
    with pytest.raises(ir.IRWeightsError, match="torch.load"):
        ir.load_ir(tmp_path / "w.pth")


def test_encoder_embeds_images_and_cosine_ranks_instances():
    config, params = ir.load_ir(FIXTURE)
    embed = ir.ir_encoder(config, params, batch=4)
    rng = np.random.default_rng(1)
    a = rng.integers(0, 256, (40, 30, 3), np.uint8)
    b = rng.integers(0, 256, (25, 25, 3), np.uint8)
    out = embed([a, b, a])
    assert out.shape == (3, 8)
    np.testing.assert_allclose(out[0], out[2], atol=1e-6)  # same image, same embedding (batch padding is inert)
    assert not np.allclose(out[0], out[1])
    assert ir.ir_encoder(config, params, output="projection")([a]).shape == (1, 16)


def test_fresh_random_weights_match_pytorch(tmp_path):
    torch = pytest.importorskip("torch")
    from tests.eval import guie_torch, make_ir_fixture
    sizes = dict(make_ir_fixture.SIZES, image_size=17, patch=5, heads=4)  # stride 3: a 5x5 grid
    torch.manual_seed(3)
    model = guie_torch.AddLayerModel(guie_torch.OverlapVisualTransformer(**sizes), 16, 8, 3).eval()
    from safetensors.torch import save_file
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, tmp_path / "model.safetensors")
    (tmp_path / "config.json").write_text(json.dumps({"num_attention_heads": 4, "patch_stride": 3}))
    config, params = ir.load_ir(tmp_path)
    pixels = np.random.default_rng(2).standard_normal((2, 17, 17, 3)).astype(np.float32)
    with torch.no_grad():
        projection, embedding = model(torch.from_numpy(pixels).permute(0, 3, 1, 2))
    out = _forward(config, params, pixels)
    np.testing.assert_allclose(out.projection, projection.numpy(), **TOL)
    np.testing.assert_allclose(out.embedding, embedding.numpy(), **TOL)
