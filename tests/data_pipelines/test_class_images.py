"""class_images: class folders with a class list build (bad images/classes skipped); 2D batches retrieve same-class."""

import zlib

import numpy as np
import pytest
from PIL import Image
from etils import epath

from data_pipelines import build, class_images, loader, records, transforms


def _image(path, colour, size=(40, 30), mode="RGB"):
    rng = np.random.default_rng(zlib.crc32(path.name.encode()))
    pixels = np.clip(np.asarray(colour) + rng.integers(-20, 20, (size[1], size[0], 3)), 0, 255).astype(np.uint8)
    image = Image.fromarray(pixels)
    (image.convert("RGBA") if mode == "RGBA" else image).save(path)


@pytest.fixture
def manual_dir(tmp_path):
    root = tmp_path / "classes"
    for folder in ("red_things", "blue_things", "mostly_broken", "unlisted"):
        (root / folder).mkdir(parents=True)
    _image(root / "red_things/a.png", (220, 30, 30))
    _image(root / "red_things/b.jpg", (220, 30, 30), size=(200, 100))  # larger than store_size: downscaled
    _image(root / "red_things/c.png", (220, 30, 30), mode="RGBA")
    _image(root / "blue_things/a.png", (30, 30, 220))
    _image(root / "blue_things/b.png", (30, 30, 220))
    (root / "blue_things/corrupt.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    (root / "blue_things/notes.txt").write_text("ignored")
    _image(root / "mostly_broken/a.png", (30, 220, 30))
    (root / "mostly_broken/bad.png").write_bytes(b"")
    _image(root / "unlisted/a.png", (0, 0, 0))
    (root / "classes.txt").write_text("red_things\tred thing\nblue_things\n\nmissing_folder\nmostly_broken\tbroken\n")
    return root


def test_build_keeps_good_classes_and_reports_the_rest(tiny_cfg, manual_dir, tmp_path):
    tiny_cfg.data_dir, tiny_cfg.class_images.manual_dir = str(tmp_path / "data"), str(manual_dir)
    builder = build.prepare(tiny_cfg, "class_images")
    assert builder.info.metadata["class_names"] == ["red thing", "blue things"]
    assert builder.info.metadata["class_counts"] == {"train": [3, 2]}
    skipped = {item["item"] for item in builder.info.metadata["skipped"]}
    assert skipped == {"blue_things/corrupt.jpg", "missing_folder", "mostly_broken/bad.png", "mostly_broken"}
    source = builder.as_data_source(split="train")
    assert [int(source[i]["label"]) for i in range(len(source))] == [0, 0, 0, 1, 1]
    big = records.decode_image(source[1]["image"])
    assert min(big.shape[:2]) == tiny_cfg.class_images.store_size and big.shape[1] == 2 * big.shape[0]


def test_2d_batches_retrieve_the_same_class(tiny_cfg, manual_dir, tmp_path):
    tiny_cfg.data_dir, tiny_cfg.class_images.manual_dir = str(tmp_path / "data"), str(manual_dir)
    tiny_cfg.mode_2d.dataset, tiny_cfg.mix.weight_3d = "class_images", 0.0
    batch = next(iter(loader.make_dataset(tiny_cfg, shard=loader.grain.sharding.NoSharding())))
    assert batch["mode"].tolist() == [1] * 4 and batch["camera_mask"].tolist() == [0] * 4
    np.testing.assert_array_equal(batch["view_mask"], [[1, 0, 0, 0]] * 4)
    assert not batch["camera"].any() and not batch["images"][:, 1:].any()
    tokenizer = transforms.Tokenizer()
    for i in range(4):
        red = batch["images"][i, 0, ..., 0].mean() > batch["images"][i, 0, ..., 2].mean()
        retrieved = batch["retrieved"][i].astype(float)
        retrieved_red = retrieved[..., 0].mean(axis=(1, 2)) > retrieved[..., 2].mean(axis=(1, 2))
        assert retrieved_red.tolist() == [red] * tiny_cfg.num_retrieved
        caption = "a photo of a red thing" if red else "a photo of a blue things"
        np.testing.assert_array_equal(batch["input_ids"][i], tokenizer(caption))


def test_class_list_defaults_to_sorted_folders(tmp_path):
    for folder in ("b_cls", "a_cls"):
        (tmp_path / folder).mkdir()
    assert class_images.read_class_list(epath.Path(tmp_path)) == [("a_cls", "a cls"), ("b_cls", "b cls")]
    (tmp_path / "classes.txt").write_text("\tno folder\n")
    with pytest.raises(class_images.BadClassListError, match="classes.txt:1"):
        class_images.read_class_list(epath.Path(tmp_path))
