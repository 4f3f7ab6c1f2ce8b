"""The preview grid: one row per example, F views + k retrievals, each retrieval labelled with what made it."""

import numpy as np
from PIL import Image

from data_pipelines import augment, preview



def _blue(pixels: np.ndarray) -> bool:
    """Any pixel of the per-retrieval labels' blue (antialiased over white); captions and legend are grey-black."""
    return bool((pixels[..., 2].astype(int) - pixels[..., 0] > 40).any())


def test_write_preview_labels_every_retrieval(tiny_cfg, tmp_path):
    out = preview.write_preview(tiny_cfg, str(tmp_path / "preview.png"), num_batches=2, cell=32)
    image = np.asarray(Image.open(out).convert("RGB"))
    rows = 2 * tiny_cfg.batch_size
    assert image.shape[:2] == (14 + rows * (32 + 14), (tiny_cfg.num_views + tiny_cfg.num_retrieved) * 32 + 16)
    for r in range(rows):  # a label under every retrieved image of every row, none under the target views
        label_line = image[14 + r * 46 + 32: 14 + (r + 1) * 46]
        for j in range(tiny_cfg.num_retrieved):
            left = tiny_cfg.num_views * 32 + 16 + j * 32
            assert _blue(label_line[:, left:left + 32]), (r, j)
        assert not _blue(label_line[:, :tiny_cfg.num_views * 32])


def test_render_grid_places_views_then_retrievals():
    batch = {"images": np.full((1, 2, 8, 8, 3), 10, np.uint8), "view_mask": np.array([[1, 0]]),
             "retrieved": np.full((1, 1, 8, 8, 3), 200, np.uint8), "mode": np.array([1])}
    grid = np.asarray(preview.render_grid([batch], [["a cat"]], cell=8))
    assert grid.shape == (8 + 14, 3 * 8 + 16, 3)  # no provenance: no label line, no legend
    assert (grid[:8, :8] == 10).all()       # view 0 as it is
    assert (grid[:8, 8:16] == 90).any()     # masked view 1 is crossed out
    assert (grid[:8, 32:40] == 200).all()   # the retrieval after the gap


def test_labels_name_the_ops():
    assert augment.describe(augment.ALL_OPS) == "P+R+C+J"
    assert augment.describe(augment.PERSPECTIVE | augment.JITTER) == "P+J"
    assert augment.describe(augment.VARIANT) == "variant" and augment.describe(augment.SAME_CLASS) == "class"
    assert augment.describe(0) == "none"
    assert "P = perspective" in augment.LEGEND and "variant = semantic variant" in augment.LEGEND
