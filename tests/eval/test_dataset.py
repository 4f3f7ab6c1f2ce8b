"""eval/dataset.py: the reference split rule and the manual-layout reader."""

import numpy as np
import pytest

from mvrag_jax.eval.dataset import SPLIT_ALTERNATE, SPLIT_FOLDERS, read_folder, split_prompt
from tests.eval.tiny_models import write_dataset


def _images(n):
    return [np.full((4, 4, 3), i, np.uint8) for i in range(n)]


def test_alternate_split_never_shares_images():
    prompt = split_prompt("p", "x", _images(5), [])
    assert prompt.split == SPLIT_ALTERNATE
    assert [int(i[0, 0, 0]) for i in prompt.retrieved] == [0, 2, 4]
    assert [int(i[0, 0, 0]) for i in prompt.reference] == [1, 3]
    with pytest.raises(ValueError, match="at least 2"):
        split_prompt("p", "x", _images(1), [])


def test_folder_split_keeps_the_folders(tmp_path):
    data = read_folder(write_dataset(tmp_path / "d", prompts=2))
    assert [p.prompt_id for p in data.prompts] == ["p0", "p1"]
    assert all(p.split == SPLIT_FOLDERS and len(p.retrieved) == 2 and len(p.reference) == 2 for p in data.prompts)
    data = read_folder(write_dataset(tmp_path / "e", prompts=2, with_reference=False))
    assert all(p.split == SPLIT_ALTERNATE and len(p.retrieved) == 2 == len(p.reference) for p in data.prompts)


def test_unusable_prompts_are_skipped_with_a_reason(tmp_path):
    root = write_dataset(tmp_path / "d", prompts=2)
    (root / "p1" / "prompt.txt").unlink()
    data = read_folder(root)
    assert [p.prompt_id for p in data.prompts] == ["p0"]
    assert data.skipped[0]["item"] == "p1" and "prompt.txt" in data.skipped[0]["reason"]


def _masked_prompt(root, mask_name="0.png", mask_size=(6, 6)):
    """One prompt: two retrieved photos, one reference photo (red object on a blue background) with an object mask."""
    from PIL import Image
    (root / "p" / "retrieved").mkdir(parents=True)
    (root / "p" / "reference").mkdir()
    (root / "p" / "masks").mkdir()
    (root / "p" / "prompt.txt").write_text("a red thing\n")
    photo = np.zeros((6, 6, 3), np.uint8)
    photo[...] = (0, 0, 255)
    photo[2:4, 2:4] = (255, 0, 0)
    for i in range(2):
        Image.fromarray(photo).save(root / "p" / "retrieved" / f"r{i}.png")
    Image.fromarray(photo).save(root / "p" / "reference" / "0.png")
    mask = np.zeros(mask_size, np.uint8)
    mask[2:4, 2:4] = 255
    Image.fromarray(mask).save(root / "p" / "masks" / mask_name)
    return photo


def test_a_masked_reference_is_scored_cut_out_onto_the_grey(tmp_path):
    photo = _masked_prompt(tmp_path / "d")
    data = read_folder(tmp_path / "d")
    (prompt,) = data.prompts
    (reference,) = prompt.reference
    expected = np.full_like(photo, 127)
    expected[2:4, 2:4] = (255, 0, 0)
    np.testing.assert_array_equal(reference, expected)  # the blue background became the views' grey
    assert prompt.segmented == 1
    assert all((image == photo).all() for image in prompt.retrieved)  # the model's conditioning stays as retrieved


def test_masks_follow_the_alternate_split_to_the_held_out_positions():
    images = _images(4)
    half = np.full((4, 4), 0.5, np.float32)
    prompt = split_prompt("p", "x", images, [], retrieved_masks=[half, None, None, half], background=100)
    assert [int(i[0, 0, 0]) for i in prompt.retrieved] == [0, 2]  # even positions condition, never masked
    assert [int(i[0, 0, 0]) for i in prompt.reference] == [1, 52] and prompt.segmented == 1  # rint(3*.5 + 100*.5)


@pytest.mark.parametrize("mask_name, mask_size, reason", [
    ("nope.png", (6, 6), "masks/nope.* has no image nope.* in reference/ or retrieved/"),
    ("0.png", (5, 6), "masks/0.* is 6x5 but reference/0.* is 6x6"),
])
def test_a_mask_without_its_image_or_of_another_size_skips_the_prompt(tmp_path, mask_name, mask_size, reason):
    _masked_prompt(tmp_path / "d", mask_name, mask_size)
    (tmp_path / "d" / "q" / "retrieved").mkdir(parents=True)
    (tmp_path / "d" / "q" / "prompt.txt").write_text("another\n")
    for i in range(2):
        from PIL import Image
        Image.new("RGB", (4, 4)).save(tmp_path / "d" / "q" / "retrieved" / f"{i}.png")
    data = read_folder(tmp_path / "d")
    assert [p.prompt_id for p in data.prompts] == ["q"]
    assert data.skipped[0]["item"] == "p" and reason in data.skipped[0]["reason"]
