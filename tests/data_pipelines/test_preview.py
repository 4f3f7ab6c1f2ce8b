"""The preview grid: one row per example, F views + k retrievals, for people to look at."""

import numpy as np
from PIL import Image

from data_pipelines import preview


def test_write_preview(tiny_cfg, tmp_path):
    out = preview.write_preview(tiny_cfg, str(tmp_path / "preview.png"), num_batches=2, cell=32)
    image = Image.open(out)
    rows = 2 * tiny_cfg.batch_size
    assert image.size == ((tiny_cfg.num_views + tiny_cfg.num_retrieved) * 32 + 16, rows * (32 + 14))


def test_render_grid_places_views_then_retrievals():
    batch = {"images": np.full((1, 2, 8, 8, 3), 10, np.uint8), "view_mask": np.array([[1, 0]]),
             "retrieved": np.full((1, 1, 8, 8, 3), 200, np.uint8), "mode": np.array([1])}
    grid = np.asarray(preview.render_grid([batch], [["a cat"]], cell=8))
    assert grid.shape == (8 + 14, 3 * 8 + 16, 3)
    assert (grid[:8, :8] == 10).all()       # view 0 as it is
    assert (grid[:8, 8:16] == 90).any()     # masked view 1 is crossed out
    assert (grid[:8, 32:40] == 200).all()   # the retrieval after the gap
