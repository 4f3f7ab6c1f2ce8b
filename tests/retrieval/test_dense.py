"""mvrag_jax/retrieval/dense.py: CLIPModel loading into our towers, parity with transformers' get_text_features /
get_image_features (stored fixture, see make_clip_fixture.py), the EOS pooling rule, dense index ranking."""

import hashlib
import json
import logging
import pathlib
import shutil

import numpy as np
import pytest

from mvrag_jax.inputs import images as image_ops
from mvrag_jax.inputs import text as text_ops
from mvrag_jax.retrieval import build_index, open_retriever
from mvrag_jax.retrieval.dense import CLIPModelError, eos_positions, image_features, load_dual_encoder, normalize, \
    text_features
from mvrag_jax.inputs.release import read_safetensors, write_safetensors
from mvrag_jax.retrieval.base import read_image
from mvrag_jax.retrieval.collection import read_collection
from tests.retrieval.conftest import CAPTIONS

FIXTURE = pathlib.Path(__file__).parent / "tiny_clip_features.npz"
TOL = 1e-5  # measured max abs error 9.5e-7 (text) / 6.6e-7 (image) on features of magnitude ~3


@pytest.fixture(scope="module")
def fixture() -> dict[str, np.ndarray]:
    with np.load(FIXTURE) as data:
        return {key: data[key] for key in data.files}


@pytest.fixture(scope="module")
def model(tiny_clip):
    return load_dual_encoder(tiny_clip)


def test_fixture_was_made_from_this_tiny_model(tiny_clip, fixture):
    digest = hashlib.sha256((tiny_clip / "model.safetensors").read_bytes()).hexdigest()
    assert digest == str(fixture["weights_sha256"]), "tiny_clip.py changed: rerun make_clip_fixture.py (see its doc)"


def test_text_features_match_transformers(model, fixture):
    prompts = [str(p) for p in fixture["prompts"]]
    np.testing.assert_array_equal(text_ops.tokenize(model.tokenizer, prompts, max_length=77), fixture["input_ids"])
    np.testing.assert_allclose(text_features(model, prompts), fixture["text_features"], atol=TOL, rtol=0)


def test_image_features_match_transformers(model, fixture):
    pixels = image_ops.clip_preprocess(list(fixture["images"]), model.processor)
    np.testing.assert_array_equal(pixels, fixture["pixel_values"].transpose(0, 2, 3, 1))
    np.testing.assert_allclose(image_features(model, pixels), fixture["image_features"], atol=TOL, rtol=0)
    # batch padding does not change results: one image alone gives its row of the batch
    np.testing.assert_allclose(image_features(model, pixels[1:2]), fixture["image_features"][1:2], atol=TOL, rtol=0)


def test_eos_pooling_rule():
    ids = np.array([[5, 9, 7, 7, 7], [5, 7, 0, 0, 0]])
    np.testing.assert_array_equal(eos_positions(ids, 7), [2, 1])  # first EOS, even when pads equal EOS
    np.testing.assert_array_equal(eos_positions(ids, 2), [1, 1])  # legacy configs: the largest id


def test_missing_preprocessor_config_uses_the_towers_size(tiny_clip, model, tmp_path):
    folder = shutil.copytree(tiny_clip, tmp_path / "clip")
    (folder / "preprocessor_config.json").unlink()
    assert load_dual_encoder(folder).processor == model.processor


def test_models_without_projections_or_with_a_foreign_tokenizer_are_refused(tiny_clip, tmp_path):
    folder = shutil.copytree(tiny_clip, tmp_path / "clip")
    config = json.loads((folder / "config.json").read_text())
    config["text_config"]["eos_token_id"] = 49407
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(CLIPModelError, match="tokenizer does not belong"):
        load_dual_encoder(folder)
    tensors = read_safetensors(folder / "model.safetensors")
    del tensors["text_projection.weight"]
    write_safetensors(folder / "model.safetensors", tensors)
    with pytest.raises(CLIPModelError, match="text_projection"):
        load_dual_encoder(folder)
    with pytest.raises(FileNotFoundError):
        load_dual_encoder(tmp_path / "nope")


def test_dense_index_ranks_by_cosine_similarity(collection, tiny_clip, model, tmp_path, caplog):
    (collection.parent / "images" / "img_4.png").write_bytes(b"broken")  # skipped at index time, with a warning
    with caplog.at_level(logging.WARNING):
        index = build_index(collection, tmp_path / "idx", kind="dense", clip_model=str(tiny_clip),
                            show_progress=False)
    assert "img_4.png" in caplog.text
    manifest = json.loads((index / "manifest.json").read_text())
    assert manifest["kind"] == "dense" and manifest["count"] == 5 and manifest["dense"]["projection_dim"] == 16

    root, records = read_collection(collection)
    kept = [r for r in records if r.image != "images/img_4.png"]
    image_emb = normalize(image_features(model, image_ops.clip_preprocess(
        [read_image(root / r.image) for r in kept],
        model.processor)))
    retriever = open_retriever(index=str(index))
    for prompt in ("a red cube", "blue"):
        expected = image_emb @ normalize(text_features(model, [prompt]))[0]
        hits = retriever.retrieve(prompt, 3)
        assert [h.score for h in hits] == pytest.approx(sorted(expected, reverse=True)[:3], abs=1e-5)
        assert [h.caption for h in hits] == [kept[i].caption for i in np.argsort(-expected, kind="stable")[:3]]
        assert [h.path for h in hits] == [h.path for h in retriever.retrieve(prompt, 3)]  # deterministic
    assert {h.caption for h in retriever.retrieve("x", 10)} == set(CAPTIONS) - {"a yellow torus"}
