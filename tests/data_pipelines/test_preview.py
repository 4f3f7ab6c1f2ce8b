"""The preview grid: one row per example, F views + k retrievals, for people to look at."""

from PIL import Image

from data_pipelines import preview


def test_write_preview(tiny_cfg, tmp_path):
    out = preview.write_preview(tiny_cfg, str(tmp_path / "preview.png"), num_batches=2, cell=32)
    image = Image.open(out)
    rows = 2 * tiny_cfg.batch_size
    assert image.size == ((tiny_cfg.num_views + tiny_cfg.num_retrieved) * 32 + 16, rows * (32 + 14))
