"""What a person can check in the demo's output: does the colour of the generated object match the prompt?

For every object that `mvrag generate` wrote (`record.json` + `view_*.png`), the object's pixels are those that differ
clearly from the flat background grey of the synthetic renders; their mean colour is matched to the palette of
`data_pipelines/shapes.py` by direction in RGB (cosine), so shading, which scales albedo, does not change the answer.
The rate of objects whose dominant colour is the colour the prompt names is compared with chance (1 / palette size).

    python -m mvrag_jax.demo.colour out/demo/generated --colours red,green,blue
"""

import dataclasses
import json
import pathlib
import sys
from typing import Sequence

import numpy as np
from PIL import Image

from data_pipelines.shapes import colour_rgb
from mvrag_jax.errors import UsageError

BACKGROUND = 127          # grey level of the synthetic renders' background (configs/data.py `background`)
OBJECT_THRESHOLD = 40     # sum over RGB of |pixel - background| above which a pixel belongs to the object
MIN_OBJECT_FRACTION = 0.002  # fewer object pixels than this: nothing was drawn, no colour


@dataclasses.dataclass(frozen=True)
class ColourScore:
    objects: int              # objects whose prompt names a palette colour
    matches: int
    rate: float               # matches / objects
    chance: float             # 1 / palette size
    per_object: tuple[dict, ...]


def dominant_colour(views: np.ndarray, palette: Sequence[str], background: int = BACKGROUND) -> str | None:
    """The palette colour closest in direction to the mean object pixel of uint8 views [n, h, w, 3]; None if empty."""
    pixels = np.asarray(views, np.float32).reshape(-1, 3)
    is_object = np.abs(pixels - background).sum(axis=-1) > OBJECT_THRESHOLD
    if is_object.mean() < MIN_OBJECT_FRACTION:
        return None
    mean = pixels[is_object].mean(axis=0)
    unit = lambda v: np.asarray(v, np.float32) / max(np.linalg.norm(v), 1e-6)
    similarity = [float(unit(mean) @ unit(colour_rgb(name))) for name in palette]
    return palette[int(np.argmax(similarity))]


def prompt_colour(prompt: str, palette: Sequence[str]) -> str | None:
    words = prompt.lower().replace(",", " ").replace(".", " ").split()
    named = [c for c in palette if c in words]
    return named[0] if len(named) == 1 else None


def score_outputs(generated_dir: str | pathlib.Path, palette: Sequence[str]) -> ColourScore:
    """Colour-match rate over every finished object of a `mvrag generate` output folder."""
    rows = []
    for record_path in sorted(pathlib.Path(generated_dir).glob("*/record.json")):
        record = json.loads(record_path.read_text())
        wanted = prompt_colour(record["prompt"], palette)
        if wanted is None:
            continue
        views = np.stack([np.asarray(Image.open(p).convert("RGB"))
                          for p in sorted(record_path.parent.glob("view_*.png"))])
        got = dominant_colour(views, palette)
        rows.append({"object": record_path.parent.name, "prompt": record["prompt"], "wanted": wanted, "got": got,
                     "match": got == wanted})
    if not rows:
        raise UsageError(f"{generated_dir} holds no finished object whose prompt names one of {list(palette)}; run "
                         "`mvrag generate` with prompts like 'a red cube' first")
    matches = sum(row["match"] for row in rows)
    return ColourScore(len(rows), matches, matches / len(rows), 1.0 / len(palette), tuple(rows))


def main(argv: list[str]) -> int:
    import argparse
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("generated_dir")
    parser.add_argument("--colours", default="red,green,blue", help="the palette the demo trained on")
    parser.add_argument("--json", default=None, help="also write the score here")
    args = parser.parse_args(argv)
    try:
        score = score_outputs(args.generated_dir, args.colours.split(","))
    except ValueError as e:
        print(f"colour score: error: {e}", file=sys.stderr)
        return 2
    for row in score.per_object:
        print(f"{'ok ' if row['match'] else 'no '} {row['prompt']!r}: dominant colour {row['got']}")
    print(f"colour match: {score.matches}/{score.objects} = {score.rate:.0%} (chance {score.chance:.0%})")
    if args.json:
        pathlib.Path(args.json).write_text(json.dumps(dataclasses.asdict(score), indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
