"""An analytic DINOv2 for the demo: its CLS embedding is the mean colour of what differs from the grey background.

MV-RAG's fusion weight (pipeline/fusion.py, the official f_score.py) is the cosine similarity of DINOv2 CLS
embeddings of the prior pass's views and the retrieved images: the real DINOv2 sees "same object or not". The demo
cannot download it, and a random tiny DINOv2 sees nothing: measured on the demo's renders, its CLS cosine was 0.93
for the same concept and 0.88 for different ones, so every fusion weight came out ~0.95. These weights make the
unchanged DINOv2 architecture (our `models/dinov2.py`, transformers' Dinov2Model after export) compute

    CLS ~ mean over patches of (mean colour of the patch - background grey), in 6 of its 32 channels

which is what the demo needs DINOv2 for: views of the prompted colour agree with retrievals of it and others do not.

How:
- the patch embedding writes +G * offset and -G * offset of each colour channel (patch mean minus the grey
  background, in the processor's normalised units) to channels 0-5; the pair keeps every token's channel mean at
  exactly 0, so LayerNorm only rescales; the grey background embeds to 0;
- position embeddings are 0 and the CLS token is CLS_FLOOR in channel 6 alone: a view with nothing on the grey
  embeds to that direction instead of to 0 (whose L2 normalisation would be NaN), nearly orthogonal to every
  colour (the final LayerNorm centres it: cosines ~0.05);
- layer 0's query and key are 0: attention is uniform over all tokens, and value and output are the identity, so
  the CLS token becomes the mean over tokens of norm1(token); every other residual branch is 0;
- LAYER_NORM_EPS (large) keeps norm1 nearly linear: a faint background tint stays faint instead of being blown up
  to a full-strength colour by the normalisation.
"""

import dataclasses
from typing import Any

import flax.linen as nn
import jax
import numpy as np

from mvrag_jax.models import dinov2

GAIN = 1.0             # G: patch offsets of a saturated colour are ~3 normalised units, variance ~0.5 per token
LAYER_NORM_EPS = 0.5   # >> a background tint's variance (~5e-4), ~ a full colour's: norm1 is near linear
BACKGROUND = 127       # grey level of the demo's renders (configs/data.py background_level)
_CHANNELS = 6          # +/- offset of R, G, B
CLS_FLOOR = 0.05       # ~1/20 of a saturated object's mean: cosines move by < 0.01


def colour_dino_config(base: dinov2.DINOv2Config) -> dinov2.DINOv2Config:
    if base.hidden_size <= _CHANNELS:
        raise ValueError(f"colour DINOv2 needs hidden_size > {_CHANNELS}, got {base.hidden_size}")
    return dataclasses.replace(base, layer_norm_eps=LAYER_NORM_EPS)


def colour_dino_params(config: dinov2.DINOv2Config, mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225),
                       background: int = BACKGROUND) -> dict[str, Any]:
    """Float32 numpy params (our Flax layout) for `config`; `mean`/`std` are the processor's normalisation (the
    tiny release's facebook/dinov2-base/preprocessor_config.json, ImageNet's), so the grey embeds to 0."""
    shapes = nn.unbox(jax.eval_shape(dinov2.init_params, config, jax.random.key(0)))
    grey = (background / 255.0 - np.asarray(mean)) / np.asarray(std)             # [3] normalised background
    p, d = config.patch_size, config.hidden_size
    kernel, bias = np.zeros((p, p, 3, d), np.float32), np.zeros(d, np.float32)
    for c in range(3):
        for sign_index, sign in enumerate((1.0, -1.0)):
            kernel[:, :, c, 2 * c + sign_index] = sign * GAIN / (p * p)
            bias[2 * c + sign_index] = -sign * GAIN * grey[c]
    identity = np.eye(d, dtype=np.float32)

    def fill(path: tuple[str, ...], shape: tuple[int, ...]) -> np.ndarray:
        joined = "/".join(path)
        if joined == "embeddings/patch_embeddings/projection/kernel":
            return kernel
        if joined == "embeddings/patch_embeddings/projection/bias":
            return bias
        if joined == "embeddings/cls_token":
            floor = np.zeros(shape, np.float32)
            floor[..., _CHANNELS] = CLS_FLOOR
            return floor
        if path[-1] in ("scale", "lambda1"):
            return np.ones(shape, np.float32)
        if path[0] == "encoder" and path[1] == "layer_0" and path[-1] == "kernel" and (
                path[-2] == "value" or path[-2] == "dense"):
            return identity
        return np.zeros(shape, np.float32)   # q, k, every other residual branch, cls/mask/position, biases

    def walk(tree: Any, path: tuple[str, ...]) -> Any:
        if isinstance(tree, dict):
            return {k: walk(v, path + (k,)) for k, v in tree.items()}
        return fill(path, tuple(tree.shape))

    return walk(shapes, ())
