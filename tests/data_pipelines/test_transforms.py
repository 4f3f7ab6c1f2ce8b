"""Per-record transforms: prompt rules, token ids, masks, and retrievals drawn only from non-target views."""

import pickle

import numpy as np
import pytest

from data_pipelines import records, transforms
from mvrag_jax.inputs.camera import get_camera


def test_prompt_rules():
    assert transforms.prompt_3d("a wooden chair.") == "a wooden chair, 3d asset"
    assert transforms.prompt_3d("a chair..") == "a chair., 3d asset"  # only one '.' is dropped, as upstream
    assert transforms.prompt_2d("orange cube") == "a photo of an orange cube"
    assert transforms.prompt_2d("dog", "{name}") == "dog"


@pytest.mark.parametrize("text", ["a red cube, 3d asset", "A Photo of an ORANGE   torus!!", "x " * 100,
                                  "caf\u00e9 na\u00efve \u201cquotes\u201d", ""])
def test_tokenizer_matches_clip_tokenizer_also_after_pickling(text):
    from transformers import CLIPTokenizer
    clip = CLIPTokenizer.from_pretrained(str(transforms.DEFAULT_TOKENIZER_DIR))
    expected = clip(text, padding="max_length", max_length=77, truncation=True)["input_ids"]
    tokenizer = transforms.Tokenizer()
    for candidate in (tokenizer, pickle.loads(pickle.dumps(tokenizer))):  # workers get a pickled copy
        ids = candidate(text)
        assert ids.dtype == np.int32 and ids.tolist() == expected


def test_missing_tokenizer_folder_names_the_flag():
    with pytest.raises(FileNotFoundError, match="tokenizer_dir"):
        transforms.Tokenizer("/nonexistent/tokenizer")


def _solid(colour, size=16):
    return records.encode_png(np.full((size, size, 3), colour, np.uint8))


def _multiview_record(views):
    count = len(views)
    return {"object_id": b"obj", "caption": b"a thing.", "views": np.array(views, dtype=object),
            "elevation": np.full(count, 12.0, np.float32),
            "azimuth": np.array([(30.0 + 90 * i) % 360 for i in range(count)], np.float32),
            "orbits": np.arange(4, dtype=np.int32)[None]}


def test_multiview_retrievals_come_from_extra_views(tiny_cfg):
    tiny_cfg.image_size, tiny_cfg.retrieved_size = 16, 16
    transform = transforms.MultiviewTransform(tiny_cfg, transforms.Tokenizer())
    record = _multiview_record([_solid((20, 20, 230))] * 4 + [_solid((230, 20, 20))] * 2)  # blue targets, red extras
    example = transform(record, np.random.default_rng(0))
    assert (example["images"][..., 2] > 200).all()
    assert (example["retrieved"][..., 0].mean(axis=(1, 2)) > example["retrieved"][..., 2].mean(axis=(1, 2))).all()
    np.testing.assert_allclose(example["camera"], get_camera(4, 12.0, 30.0), atol=1e-5)
    assert example["view_mask"].tolist() == [1, 1, 1, 1] and example["mode"] == 0 and example["camera_mask"] == 1


@pytest.mark.parametrize("change, message", [
    (lambda r: r.update(orbits=np.zeros((1, 3), np.int32)), "orbits shape"),
    (lambda r: r.update(orbits=np.array([[0, 1, 2, 9]], np.int32)), "orbit indices"),
    (lambda r: r.update(views=r["views"][:4], elevation=r["elevation"][:4], azimuth=r["azimuth"][:4]), "no views"),
    (lambda r: r["views"].__setitem__(1, b"broken"), "undecodable"),
])
def test_malformed_multiview_records_raise_record_error(tiny_cfg, change, message):
    tiny_cfg.image_size, tiny_cfg.retrieved_size = 16, 16
    record = _multiview_record([_solid((90, 90, 90))] * 6)
    change(record)
    with pytest.raises(transforms.RecordError, match=message):
        transforms.MultiviewTransform(tiny_cfg, transforms.Tokenizer())(record, np.random.default_rng(0))


def test_a_class_with_one_image_retrieves_crops_of_the_target(tiny_cfg):
    record = {"_index": 0, "label": 0, "class_name": b"red cube", "image": _solid((200, 10, 10), 40)}
    transform = transforms.ClassTransform(tiny_cfg, transforms.Tokenizer(), [record], np.array([[0, 1]]))
    example = transform(record, np.random.default_rng(0))
    assert example["retrieved"].shape == (2, 32, 32, 3) and (example["retrieved"][..., 0] > 150).all()
    assert example["view_mask"].tolist() == [1, 0, 0, 0] and example["mode"] == 1 and example["camera_mask"] == 0
