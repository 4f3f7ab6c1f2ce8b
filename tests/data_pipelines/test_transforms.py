"""Per-record transforms: prompt rules, token ids, masks, and retrievals drawn only from non-target views."""

import pickle

import numpy as np
import pytest

from data_pipelines import augment, records, transforms
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


def _rgba_render(colour, size=16):
    """A centred opaque square on a transparent background, as renders are stored."""
    image = np.zeros((size, size, 4), np.uint8)
    image[size // 4:3 * size // 4, size // 4:3 * size // 4] = (*colour, 255)
    return records.encode_png(image)


def test_targets_share_the_objects_grey_and_retrievals_draw_their_own(tiny_cfg):
    tiny_cfg.update(image_size=16, retrieved_size=16, background="random", background_range=(40, 220))
    tiny_cfg.mode_3d.augment.update(perspective_prob=0.0, rotation_prob=0.0, crop_prob=0.0, jitter_prob=0.0)
    transform = transforms.MultiviewTransform(tiny_cfg, transforms.Tokenizer(), provenance=True)
    record = _multiview_record([_rgba_render((250, 10, 10))] * 6)
    greys, retrieval_greys = [], []
    for seed in range(30):
        example = transform(record, np.random.default_rng(seed))
        corners = example["images"][:, 0, 0]  # [F, 3]: background pixels
        assert (corners == corners[0, 0]).all()  # one grey per object, on every view and channel
        greys.append(int(corners[0, 0]))
        np.testing.assert_array_equal(example["images"][0, 8, 8], (250, 10, 10))  # the object itself is untouched
        assert example["retrieved_ops"].tolist() == [0, 0]  # every op off: the render, resized
        retrieval_greys += [int(r[0, 0, 0]) for r in example["retrieved"]]
    assert 40 <= min(greys) and max(greys) <= 220 and len(set(greys)) >= 20
    assert sum(g != greys[i // 2] for i, g in enumerate(retrieval_greys)) >= 50  # retrievals: their own greys
    again = transform(record, np.random.default_rng(7))
    np.testing.assert_array_equal(again["images"][:, 0, 0, 0], greys[7])  # a function of the rng: reproducible


def _variant_record(count_variants):
    record = _multiview_record([_solid((20, 20, 230))] * 4 + [_solid((230, 20, 20))] * 2)
    record["variants"] = records.image_bytes_list([_solid((20, 230, 20), 24)] * count_variants)
    return record


def test_variants_are_mixed_in_at_the_configured_rate(tiny_cfg):
    tiny_cfg.update(image_size=16, retrieved_size=16)
    tiny_cfg.mode_3d.variant_prob = 0.3
    transform = transforms.MultiviewTransform(tiny_cfg, transforms.Tokenizer(), provenance=True)
    record, trials = _variant_record(2), 400
    flags = np.stack([transform(record, np.random.default_rng(seed))["retrieved_ops"] for seed in range(trials)])
    is_variant = flags == augment.VARIANT
    n, p = is_variant.size, 0.3
    assert abs(is_variant.sum() - n * p) < 4 * np.sqrt(n * p * (1 - p))  # binomial(800, 0.3): 240 +- 52
    assert (flags[~is_variant] == augment.ALL_OPS).all()  # the others are augmented renders (all probs 1.0)
    example = transform(record, np.random.default_rng(int(np.argmax(is_variant.any(axis=1)))))
    variant = example["retrieved"][example["retrieved_ops"] == augment.VARIANT][0]
    assert (variant == (20, 230, 20)).all()  # the variant, resized, as it is
    for prob, variants in ((0.0, 2), (1.0, 0)):  # probability 0, or an object without variants: renders only
        tiny_cfg.mode_3d.variant_prob = prob
        transform = transforms.MultiviewTransform(tiny_cfg, transforms.Tokenizer(), provenance=True)
        flags = [transform(_variant_record(variants), np.random.default_rng(s))["retrieved_ops"] for s in range(20)]
        assert not (np.stack(flags) == augment.VARIANT).any()


@pytest.mark.parametrize("field, value, message", [
    ("variant_prob", 1.5, r"mode_3d.variant_prob=1.5; a probability is in \[0, 1\]"),
    ("variant_prob", -0.1, r"variant_prob=-0.1"),
    ("retrieval_sources", (3, 2), r"retrieval_sources=\(3, 2\); give \(min, max\)"),
])
def test_bad_3d_fields_are_clear_errors(tiny_cfg, field, value, message):
    tiny_cfg.mode_3d[field] = value
    with pytest.raises(ValueError, match=message):
        transforms.MultiviewTransform(tiny_cfg, transforms.Tokenizer())
