"""models/siglip.py against transformers' SiglipModel: the committed tiny model's cases (make_siglip_fixture.py)
always, fresh random weights when torch + transformers are installed; the alignment score."""

import pathlib

import jax
import numpy as np
import pytest

from mvrag_jax.eval import alignment
from mvrag_jax.models import siglip

FIXTURE = pathlib.Path(__file__).parent / "fixtures" / "siglip_tiny"
TOL = dict(atol=1e-5, rtol=1e-4)


def _check(model: alignment.Siglip, cases) -> None:
    with jax.default_matmul_precision("float32"):
        text = siglip.text_embeds(model.config, model.params, cases["input_ids"])
        image = siglip.image_embeds(model.config, model.params, cases["pixels"])
    np.testing.assert_allclose(text, cases["text_embeds"], **TOL)
    np.testing.assert_allclose(image, cases["image_embeds"], **TOL)


def test_committed_cases_match_transformers():
    model = alignment.load_siglip(FIXTURE)
    assert not model.processor.do_center_crop and model.processor.resize_hw == (24, 24)
    _check(model, np.load(FIXTURE / "cases.npz"))


def test_prompts_and_images_embed():
    model = alignment.load_siglip(FIXTURE)
    text = model.text(["a red cube", "a blue ball"])
    rng = np.random.default_rng(0)
    images = model.images([rng.integers(0, 256, (30, 40, 3), np.uint8) for _ in range(3)])
    assert text.shape == (2, 32) and images.shape == (3, 32) and not np.allclose(text[0], text[1])
    score, cos = alignment.clipscore(text[0], images)
    assert -100 <= cos <= 100 and score == pytest.approx(
        100 * 2.5 * np.maximum(alignment._unit(images) @ alignment._unit(text[0]), 0).mean())


def test_clipscore_clamps_negative_cosines():
    score, cos = alignment.clipscore(np.array([1.0, 0.0]), np.array([[1.0, 0.0], [-1.0, 0.0]]))
    assert (score, cos) == (pytest.approx(125.0), pytest.approx(0.0))


def test_fresh_weights_match_transformers(tmp_path):
    pytest.importorskip("torch")
    pytest.importorskip("transformers")
    from tests.eval import make_siglip_fixture as maker
    import shutil
    model = maker.build(seed=7, vision=dict(maker.VISION, image_size=32, patch_size=8, num_attention_heads=2))
    model.save_pretrained(tmp_path, safe_serialization=True)
    for name in ("preprocessor_config.json", "vocab.json", "merges.txt", "tokenizer_config.json",
                 "special_tokens_map.json"):
        shutil.copy(FIXTURE / name, tmp_path / name)
    _check(alignment.load_siglip(tmp_path), maker.cases(model, seed=3))
