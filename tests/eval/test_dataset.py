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
