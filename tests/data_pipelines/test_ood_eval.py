"""ood_eval: prompt folders build into a test split; broken prompts are skipped and reported."""

import numpy as np
from PIL import Image

from data_pipelines import build, ood_eval


def _prompt(root, name, prompt, retrieved=2, reference=0):
    folder = root / name
    (folder / "retrieved").mkdir(parents=True)
    if prompt is not None:
        (folder / "prompt.txt").write_text(prompt + "\n")
    for i in range(retrieved):
        Image.fromarray(np.full((20, 24, 3), 40 * i, np.uint8)).save(folder / "retrieved" / f"{i}.png")
    if reference:
        (folder / "reference").mkdir()
        for i in range(reference):
            Image.fromarray(np.full((16, 16, 3), 200, np.uint8)).save(folder / "reference" / f"{i}.jpg")
    return folder


def test_build_and_read_prompts(tiny_cfg, tmp_path):
    root = tmp_path / "ood"
    _prompt(root, "p000", "a 1950s jukebox", retrieved=3, reference=1)
    _prompt(root, "p001", "a tiny origami crane")
    _prompt(root, "p002", None)                 # no prompt.txt
    _prompt(root, "p003", "no refs", retrieved=0)
    (_prompt(root, "p004", "broken") / "retrieved" / "x.png").write_bytes(b"\x89PNG broken")
    tiny_cfg.data_dir, tiny_cfg.ood_eval.manual_dir = str(tmp_path / "data"), str(root)
    builder = build.prepare(tiny_cfg, "ood_eval")
    assert {item["item"] for item in builder.info.metadata["skipped"]} == {"p002", "p003", "p004"}
    prompts = ood_eval.read_prompts(builder)
    assert [p["prompt"] for p in prompts] == ["a 1950s jukebox", "a tiny origami crane"]
    assert len(prompts[0]["retrieved"]) == 3 and prompts[0]["retrieved"][1].shape == (20, 24, 3)
    assert len(prompts[0]["reference"]) == 1 and prompts[1]["reference"] == []


def test_read_prompts_composites_over_the_builder_background(tiny_cfg, tmp_path):
    root = tmp_path / "ood"
    folder = _prompt(root, "p000", "a glass marble", retrieved=0)
    Image.fromarray(np.zeros((8, 8, 4), np.uint8)).save(folder / "retrieved" / "clear.png")  # fully transparent
    tiny_cfg.data_dir, tiny_cfg.ood_eval.manual_dir, tiny_cfg.background_level = str(tmp_path / "data"), str(root), 90
    [prompt] = ood_eval.read_prompts(build.prepare(tiny_cfg, "ood_eval"))
    assert (prompt["retrieved"][0] == 90).all()


def test_masks_are_built_beside_their_images(tiny_cfg, tmp_path):
    root = tmp_path / "ood"
    folder = _prompt(root, "p000", "a red thing", retrieved=2, reference=1)
    (folder / "masks").mkdir()
    mask = np.zeros((16, 16), np.uint8)
    mask[4:8] = 255
    Image.fromarray(mask).save(folder / "masks" / "0.png")  # reference/0.jpg, not retrieved/0.png
    (_prompt(root, "p001", "unmasked") / "masks").mkdir()
    tiny_cfg.data_dir, tiny_cfg.ood_eval.manual_dir = str(tmp_path / "data"), str(root)
    prompts = ood_eval.read_prompts(build.prepare(tiny_cfg, "ood_eval"))
    assert [p["retrieved_masks"] for p in prompts] == [[None, None], [None, None]]
    (ref_mask,) = prompts[0]["reference_masks"]
    np.testing.assert_array_equal(ref_mask, mask / 255.0)
    assert prompts[1]["reference_masks"] == []
