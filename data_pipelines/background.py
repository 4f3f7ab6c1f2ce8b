"""Render backgrounds: the grey that a render's alpha is composited over, drawn per object in the loader.

Paper C.1: the renders' "empty background [is] replaced by a random grey". Renders are stored with
their alpha (synthetic_shapes always; mv_renders when the files have one), so the grey is chosen when a record
becomes an example: a pure function of the record's rng (config + position), so a resumed run sees the same pixels.

    spec = Background.from_config(cfg)            # cfg.background, background_range, background_level
    grey = spec.draw(rng)                         # int 0..255: `level` when fixed, uniform in the range when random
    rgb = composite(decode_rgba(png_bytes), grey)  # uint8 [h, w, 3]
"""

import dataclasses
import io

import ml_collections as mlc
import numpy as np
from PIL import Image

from mvrag_jax.errors import MvragError

MODES = ("random", "fixed")


class BackgroundConfigError(MvragError, ValueError):
    pass


def _grey(value, field: str) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or not 0 <= value <= 255:
        raise BackgroundConfigError(f"--config.{field}={value!r}; a grey level is an integer in [0, 255]")
    return int(value)


@dataclasses.dataclass(frozen=True)
class Background:
    mode: str       # random | fixed
    low: int        # inclusive grey range of "random"
    high: int
    level: int      # the grey of "fixed"

    @classmethod
    def from_config(cls, cfg: mlc.ConfigDict) -> "Background":
        """From the data config, with one error naming the field, the value and the fix for each mistake."""
        if cfg.background not in MODES:
            raise BackgroundConfigError(f"--config.background={cfg.background!r}; choose one of {MODES}")
        bounds = tuple(cfg.background_range)
        if len(bounds) != 2:
            raise BackgroundConfigError(f"--config.background_range={bounds!r}; give (low, high) grey levels")
        low, high = (_grey(v, "background_range") for v in bounds)
        if low > high:
            raise BackgroundConfigError(f"--config.background_range=({low}, {high}) is empty; low must be <= high, "
                                        "e.g. (64, 192)")
        return cls(cfg.background, low, high, _grey(cfg.background_level, "background_level"))

    def draw(self, rng: np.random.Generator) -> int:
        """One grey level. Always consumes one draw, so switching modes does not shift the record's other draws."""
        value = int(rng.integers(self.low, self.high + 1))
        return value if self.mode == "random" else self.level


def decode_rgba(data: bytes) -> np.ndarray:
    """Encoded bytes -> uint8 [h, w, 4] (alpha 255 for images without one). Raises records.DECODE_ERRORS."""
    with Image.open(io.BytesIO(data)) as image:
        image.load()
        return np.asarray(image.convert("RGBA"))


def composite(rgba: np.ndarray, grey: int) -> np.ndarray:
    """Straight-alpha RGBA [h, w, 4] over a flat grey -> uint8 [h, w, 3]: (rgb a + grey (255 - a) + 127) // 255,
    i.e. rgb * alpha + grey * (1 - alpha) rounded, in uint16 (at most 255 * 255 + 127 < 2**16)."""
    alpha = rgba[..., 3:].astype(np.uint16)
    if alpha.min() == 255:
        return np.ascontiguousarray(rgba[..., :3])
    mixed = rgba[..., :3].astype(np.uint16) * alpha + np.uint16(grey) * (255 - alpha) + 127
    return (mixed // 255).astype(np.uint8)
