"""Write a PNG grid of training batches: what the model sees.

    python -m data_pipelines.preview --config configs/data.py:size=tiny --config.data_dir /tmp/mvrag_data \
        --out /tmp/mvrag_preview.png --batches 2

One row per example: the F target views (2D mode: view 0, masked views crossed out), a gap, then the k retrieved
images, with the decoded caption and mode underneath, and under each retrieved image what made it (the loader's
provenance flags: P perspective, R rotation, C crop, J colour jitter, "variant" a semantic variant, "class" a
same-class image; a legend line heads the grid), so the configured augmentation mix can be checked by eye.
Tiny images are enlarged (nearest neighbour) to `--cell`.
"""

import sys

import grain
import ml_collections as mlc
import numpy as np
from absl import app, flags
from ml_collections import config_flags
from PIL import Image, ImageDraw

import configs
from data_pipelines import augment, loader, transforms

_GAP, _TEXT_HEIGHT = 8, 14


def _cell(image: np.ndarray, cell: int, valid: bool = True) -> Image.Image:
    tile = Image.fromarray(image).resize((cell, cell), Image.Resampling.NEAREST if image.shape[0] < cell else
                                         Image.Resampling.BICUBIC)
    if not valid:
        draw = ImageDraw.Draw(tile)
        draw.line((0, 0, cell, cell), fill=(90, 90, 90))
        draw.line((0, cell, cell, 0), fill=(90, 90, 90))
    return tile


def _uint8(images: np.ndarray) -> np.ndarray:
    if images.dtype == np.uint8:
        return images
    return np.clip(np.round((images + 1.0) * 127.5), 0, 255).astype(np.uint8)  # float32 batches are in [-1, 1]


def render_grid(batches: list[dict], captions: list[list[str]], cell: int = 96) -> Image.Image:
    """Grid image of `batches`; `captions[b][i]` is the text shown under example i of batch b. Batches with
    `retrieved_ops` (loader provenance) get a label under each retrieved image and a legend line on top."""
    rows = [(batch, i, captions[b][i]) for b, batch in enumerate(batches) for i in range(len(batch["mode"]))]
    num_views, num_retrieved = batches[0]["images"].shape[1], batches[0]["retrieved"].shape[1]
    labelled = all("retrieved_ops" in batch for batch in batches)
    width = (num_views + num_retrieved) * cell + _GAP * 2
    row_height = cell + _TEXT_HEIGHT
    head = _TEXT_HEIGHT if labelled else 0
    canvas = Image.new("RGB", (width, head + len(rows) * row_height), (255, 255, 255))
    draw = ImageDraw.Draw(canvas)
    if labelled:
        draw.text((2, 1), f"retrievals: {augment.LEGEND}", fill=(0, 0, 0))
    for r, (batch, i, caption) in enumerate(rows):
        top = head + r * row_height
        images = _uint8(batch["images"][i])
        for v in range(num_views):
            canvas.paste(_cell(images[v], cell, bool(batch["view_mask"][i, v])), (v * cell, top))
        for j in range(num_retrieved):
            left = num_views * cell + _GAP * 2 + j * cell
            canvas.paste(_cell(batch["retrieved"][i, j], cell), (left, top))
            if labelled:
                label = augment.describe(int(batch["retrieved_ops"][i, j]))
                draw.text((left + 2, top + cell + 1), label, fill=(0, 0, 160))
        mode = "3D" if batch["mode"][i] == transforms.MODE_3D else "2D"
        text, room = f"[{mode}] {caption}", num_views * cell + _GAP  # under the views; the labels own the rest
        while labelled and len(text) > 1 and draw.textlength(text, font=draw.getfont()) > room:
            text = text[:-2] + "~"
        draw.text((2, top + cell + 1), text, fill=(0, 0, 0))
    return canvas


def decode_captions(batches: list[dict], tokenizer_dir: str) -> list[list[str]]:
    """The caption of each example of each batch, decoded back from its token ids."""
    from transformers import CLIPTokenizer  # only the preview needs text back
    tokenizer = CLIPTokenizer.from_pretrained(str(transforms.Tokenizer(tokenizer_dir).folder))
    return [[tokenizer.decode(ids, skip_special_tokens=True).replace("!", "").strip() for ids in batch["input_ids"]]
            for batch in batches]


def write_preview(cfg: mlc.ConfigDict, out: str, num_batches: int = 2, cell: int = 96) -> str:
    iterator = iter(loader.make_dataset(cfg, shard=grain.sharding.NoSharding(), provenance=True))
    batches = [next(iterator) for _ in range(num_batches)]
    captions = decode_captions(batches, cfg.tokenizer_dir)
    render_grid(batches, captions, cell).save(out)
    return out


def main(argv) -> int:
    del argv
    print(f"wrote {write_preview(flags.FLAGS.config, flags.FLAGS.out, flags.FLAGS.batches, flags.FLAGS.cell)}")
    return 0


if __name__ == "__main__":
    config_flags.DEFINE_config_file(
        "config", configs.resolve("data.py:size=tiny"), "Data config (configs/data.py[:arg]).")
    flags.DEFINE_string("out", "/tmp/mvrag_preview.png", "PNG to write.")
    flags.DEFINE_integer("batches", 2, "Batches to show (1:1 mixing alternates 3D and 2D batches).")
    flags.DEFINE_integer("cell", 96, "Pixel size of each image in the grid.")
    sys.exit(app.run(main))
