"""The demo's analytic DINOv2: renders of one colour agree, of different colours do not, and a blank view is finite."""

import json

import numpy as np
import pytest

from data_pipelines import raster, shapes
from mvrag_jax.demo.colour_dino import colour_dino_config, colour_dino_params
from mvrag_jax.inputs import images
from mvrag_jax.inputs.camera import get_camera
from mvrag_jax.models import dinov2

TINY_DINO = "tests/reference/tiny_release/facebook/dinov2-base"


@pytest.fixture(scope="module")
def model():
    raw = json.loads(open(f"{TINY_DINO}/config.json").read())
    config = colour_dino_config(dinov2.DINOv2Config.from_hf_config(raw))
    processor = images.CLIPImageProcessorConfig.from_dict(json.loads(open(f"{TINY_DINO}/preprocessor_config.json").read()))
    return config, colour_dino_params(config), processor


def _renders(rng, colours, kinds, per=2):
    pictures, labels = [], []
    for colour in colours:
        for shape in kinds:
            for _ in range(per):
                mesh = shapes.make_mesh(shape, colour, scale=rng.uniform(0.4, 0.55), yaw_deg=rng.uniform(0, 360))
                camera = get_camera(1, elevation=rng.uniform(-5, 30), azimuth_start=rng.uniform(0, 360))[0]
                pictures.append(raster.render(mesh, camera, size=32, background=127, supersample=1)[..., :3])
                labels.append(colour)
    return pictures, np.array(labels)


def test_same_colour_agrees_and_other_colours_do_not(model):
    config, params, processor = model
    pictures, labels = _renders(np.random.default_rng(0), ("red", "green", "blue", "yellow"),
                                ("cube", "sphere", "cone", "torus"))
    embeddings = np.asarray(dinov2.embed_images(config, params, processor, pictures))
    similarity = embeddings @ embeddings.T
    same = (labels[:, None] == labels[None]) & ~np.eye(len(labels), dtype=bool)
    different = labels[:, None] != labels[None]
    assert same.sum() == 224 and different.sum() == 768
    # measured: 0.97 / 0.53 (a random tiny DINOv2: 0.91 / 0.88)
    assert similarity[same].mean() > 0.9
    assert similarity[different].mean() < 0.65
    assert similarity[same].mean() - similarity[different].mean() > 0.3


def test_grey_background_embeds_apart_from_every_colour(model):
    config, params, processor = model
    blank = np.full((32, 32, 3), 127, np.uint8)
    pictures, _ = _renders(np.random.default_rng(1), ("red", "yellow"), ("sphere",), per=1)
    embeddings = np.asarray(dinov2.embed_images(config, params, processor, [blank] + pictures))
    assert np.isfinite(embeddings).all()
    np.testing.assert_allclose(np.linalg.norm(embeddings, axis=-1), 1.0, rtol=1e-5)
    assert np.abs(embeddings[0] @ embeddings[1:].T).max() < 0.1  # measured 0.04-0.07


def test_too_narrow_model_is_refused():
    with pytest.raises(ValueError, match="hidden_size"):
        colour_dino_config(dinov2.DINOv2Config(hidden_size=6, num_attention_heads=1))
