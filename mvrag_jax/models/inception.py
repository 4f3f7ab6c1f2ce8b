"""Inception-v3 as FID uses it (pytorch-fid's `fid_inception_v3`, the TF 2015-12-05 graph), for FID and Inception Score.

The FID variant differs from torchvision's Inception3 in four places, all reproduced here: Mixed_5b..5d (A) and
Mixed_6b..6e (C) and Mixed_7b (E_1) average-pool without counting the zero padding (TensorFlow's rule), Mixed_7c (E_2)
max-pools instead of average-pooling, and the classifier has 1008 outputs. Inputs are resized to 299 x 299 with
torch's bilinear `F.interpolate(align_corners=False)` (no antialias, written out as two matrices) and mapped from
[0, 1] to [-1, 1], as pytorch-fid's InceptionV3(resize_input=True, normalize_input=True) does.

Param paths mirror the torch state dict (`Mixed_6b.branch7x7_2.conv.weight` -> `Mixed_6b/branch7x7_2/conv/kernel`,
BatchNorm `bn.weight|bias|running_mean|running_var` -> `bn/scale|bias|running_mean|running_var`), so the generic
rename table of convert/keys.py maps the file. `width_divisor` divides every channel count (all are multiples of 16):
1 is the real network, 16 the tiny random one the tests build.

    config = InceptionConfig()                               # or inferred from a weights file by eval/encoders.py
    pool3, logits = features(config, params, images_01)      # [b, 2048], [b, 1008]; images NHWC float in [0, 1]
"""

import dataclasses
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from mvrag_jax.errors import MvragError

BN_EPS = 1e-3          # torchvision BasicConv2d: BatchNorm2d(eps=0.001)
FID_IMAGE_SIZE = 299   # pytorch-fid resizes every input to this side
FID_NUM_CLASSES = 1008
POOL3_WIDTH = 2048     # at width_divisor 1


class InceptionConfigError(MvragError, ValueError):
    """Inception sizes that do not describe a (possibly width-divided) FID Inception-v3."""


@jax.tree_util.register_static
@dataclasses.dataclass(frozen=True)
class InceptionConfig:
    width_divisor: int = 1
    num_classes: int = FID_NUM_CLASSES
    image_size: int = FID_IMAGE_SIZE   # inputs are resized to this side; >= 75 keeps every feature map non-empty

    def __post_init__(self):
        if self.width_divisor not in (1, 2, 4, 8, 16):
            raise InceptionConfigError(f"width_divisor={self.width_divisor}; Inception channel counts are multiples "
                                       "of 16, so use 1, 2, 4, 8 or 16")
        if self.image_size < 75:
            raise InceptionConfigError(f"image_size={self.image_size}; Inception-v3 needs at least 75 px")

    def ch(self, n: int) -> int:
        return n // self.width_divisor

    @property
    def pool3_width(self) -> int:
        return self.ch(POOL3_WIDTH)


# ---- layers ----------------------------------------------------------------------------------------------------------
class FrozenBatchNorm(nn.Module):
    """Inference BatchNorm: (x - running_mean) / sqrt(running_var + eps) * scale + bias (torch eval mode)."""

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        c = x.shape[-1]
        scale = self.param("scale", nn.initializers.ones_init(), (c,))
        bias = self.param("bias", nn.initializers.zeros_init(), (c,))
        mean = self.param("running_mean", nn.initializers.zeros_init(), (c,))
        var = self.param("running_var", nn.initializers.ones_init(), (c,))
        return (x - mean) * jax.lax.rsqrt(var + BN_EPS) * scale + bias


class BasicConv2d(nn.Module):
    """conv (no bias) -> BatchNorm(eps 1e-3) -> ReLU, torch padding (ph, pw) on both sides."""

    features: int
    kernel: tuple[int, int]
    stride: int = 1
    padding: tuple[int, int] = (0, 0)

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        (ph, pw), s = self.padding, self.stride
        x = nn.Conv(self.features, self.kernel, strides=(s, s), padding=((ph, ph), (pw, pw)), use_bias=False,
                    name="conv")(x)
        return nn.relu(FrozenBatchNorm(name="bn")(x))


def _conv(features: int, kernel: int | tuple[int, int] = 1, stride: int = 1, padding: int | tuple[int, int] = 0,
          name: str | None = None) -> BasicConv2d:
    as_pair = lambda v: (v, v) if isinstance(v, int) else tuple(v)
    return BasicConv2d(features, as_pair(kernel), stride, as_pair(padding), name=name)


def avg_pool_3x3_same(x: jax.Array) -> jax.Array:
    """3x3 stride-1 average pool over valid pixels only (count_include_pad=False, TensorFlow's rule)."""
    return nn.avg_pool(x, (3, 3), strides=(1, 1), padding=((1, 1), (1, 1)), count_include_pad=False)


def max_pool_3x3(x: jax.Array, stride: int, pad: int = 0) -> jax.Array:
    return nn.max_pool(x, (3, 3), strides=(stride, stride), padding=((pad, pad), (pad, pad)))


# ---- blocks (channels concatenate in torch's branch order) -----------------------------------------------------------
class InceptionA(nn.Module):
    config: InceptionConfig
    pool_features: int

    @nn.compact
    def __call__(self, x):
        c = self.config.ch
        b1 = _conv(c(64), name="branch1x1")(x)
        b5 = _conv(c(64), 5, padding=2, name="branch5x5_2")(_conv(c(48), name="branch5x5_1")(x))
        b3 = _conv(c(64), name="branch3x3dbl_1")(x)
        b3 = _conv(c(96), 3, padding=1, name="branch3x3dbl_3")(_conv(c(96), 3, padding=1, name="branch3x3dbl_2")(b3))
        bp = _conv(c(self.pool_features), name="branch_pool")(avg_pool_3x3_same(x))
        return jnp.concatenate([b1, b5, b3, bp], axis=-1)


class InceptionB(nn.Module):
    config: InceptionConfig

    @nn.compact
    def __call__(self, x):
        c = self.config.ch
        b3 = _conv(c(384), 3, stride=2, name="branch3x3")(x)
        bd = _conv(c(96), 3, padding=1, name="branch3x3dbl_2")(_conv(c(64), name="branch3x3dbl_1")(x))
        bd = _conv(c(96), 3, stride=2, name="branch3x3dbl_3")(bd)
        return jnp.concatenate([b3, bd, max_pool_3x3(x, 2)], axis=-1)


class InceptionC(nn.Module):
    config: InceptionConfig
    channels_7x7: int

    @nn.compact
    def __call__(self, x):
        c, c7 = self.config.ch, self.config.ch(self.channels_7x7)
        b1 = _conv(c(192), name="branch1x1")(x)
        b7 = _conv(c7, name="branch7x7_1")(x)
        b7 = _conv(c7, (1, 7), padding=(0, 3), name="branch7x7_2")(b7)
        b7 = _conv(c(192), (7, 1), padding=(3, 0), name="branch7x7_3")(b7)
        bd = _conv(c7, name="branch7x7dbl_1")(x)
        bd = _conv(c7, (7, 1), padding=(3, 0), name="branch7x7dbl_2")(bd)
        bd = _conv(c7, (1, 7), padding=(0, 3), name="branch7x7dbl_3")(bd)
        bd = _conv(c7, (7, 1), padding=(3, 0), name="branch7x7dbl_4")(bd)
        bd = _conv(c(192), (1, 7), padding=(0, 3), name="branch7x7dbl_5")(bd)
        bp = _conv(c(192), name="branch_pool")(avg_pool_3x3_same(x))
        return jnp.concatenate([b1, b7, bd, bp], axis=-1)


class InceptionD(nn.Module):
    config: InceptionConfig

    @nn.compact
    def __call__(self, x):
        c = self.config.ch
        b3 = _conv(c(320), 3, stride=2, name="branch3x3_2")(_conv(c(192), name="branch3x3_1")(x))
        b7 = _conv(c(192), name="branch7x7x3_1")(x)
        b7 = _conv(c(192), (1, 7), padding=(0, 3), name="branch7x7x3_2")(b7)
        b7 = _conv(c(192), (7, 1), padding=(3, 0), name="branch7x7x3_3")(b7)
        b7 = _conv(c(192), 3, stride=2, name="branch7x7x3_4")(b7)
        return jnp.concatenate([b3, b7, max_pool_3x3(x, 2)], axis=-1)


class InceptionE(nn.Module):
    """E_1 (Mixed_7b) average-pools without padding counts; E_2 (Mixed_7c) max-pools (`max_pool=True`)."""

    config: InceptionConfig
    max_pool: bool

    @nn.compact
    def __call__(self, x):
        c = self.config.ch
        b1 = _conv(c(320), name="branch1x1")(x)
        b3 = _conv(c(384), name="branch3x3_1")(x)
        b3 = jnp.concatenate([_conv(c(384), (1, 3), padding=(0, 1), name="branch3x3_2a")(b3),
                              _conv(c(384), (3, 1), padding=(1, 0), name="branch3x3_2b")(b3)], axis=-1)
        bd = _conv(c(384), 3, padding=1, name="branch3x3dbl_2")(_conv(c(448), name="branch3x3dbl_1")(x))
        bd = jnp.concatenate([_conv(c(384), (1, 3), padding=(0, 1), name="branch3x3dbl_3a")(bd),
                              _conv(c(384), (3, 1), padding=(1, 0), name="branch3x3dbl_3b")(bd)], axis=-1)
        pooled = max_pool_3x3(x, 1, pad=1) if self.max_pool else avg_pool_3x3_same(x)
        bp = _conv(c(192), name="branch_pool")(pooled)
        return jnp.concatenate([b1, b3, bd, bp], axis=-1)


class FIDInceptionV3(nn.Module):
    """x [b, s, s, 3] in [-1, 1] (already resized) -> (pool3 [b, 2048/d], logits [b, num_classes])."""

    config: InceptionConfig

    @nn.compact
    def __call__(self, x: jax.Array) -> tuple[jax.Array, jax.Array]:
        cfg, c = self.config, self.config.ch
        x = _conv(c(32), 3, stride=2, name="Conv2d_1a_3x3")(x)          # [b, 149, 149, 32] at 299 px
        x = _conv(c(32), 3, name="Conv2d_2a_3x3")(x)                     # [b, 147, 147, 32]
        x = _conv(c(64), 3, padding=1, name="Conv2d_2b_3x3")(x)          # [b, 147, 147, 64]
        x = max_pool_3x3(x, 2)                                           # [b, 73, 73, 64]
        x = _conv(c(80), name="Conv2d_3b_1x1")(x)
        x = _conv(c(192), 3, name="Conv2d_4a_3x3")(x)                    # [b, 71, 71, 192]
        x = max_pool_3x3(x, 2)                                           # [b, 35, 35, 192]
        for name, pool in (("Mixed_5b", 32), ("Mixed_5c", 64), ("Mixed_5d", 64)):
            x = InceptionA(cfg, pool, name=name)(x)                      # [b, 35, 35, 288]
        x = InceptionB(cfg, name="Mixed_6a")(x)                          # [b, 17, 17, 768]
        for name, c7 in (("Mixed_6b", 128), ("Mixed_6c", 160), ("Mixed_6d", 160), ("Mixed_6e", 192)):
            x = InceptionC(cfg, c7, name=name)(x)
        x = InceptionD(cfg, name="Mixed_7a")(x)                          # [b, 8, 8, 1280]
        x = InceptionE(cfg, max_pool=False, name="Mixed_7b")(x)
        x = InceptionE(cfg, max_pool=True, name="Mixed_7c")(x)           # [b, 8, 8, 2048]
        pool3 = x.mean(axis=(1, 2))                                      # adaptive average pool -> [b, 2048]
        logits = nn.Dense(cfg.num_classes, name="fc")(pool3)             # [b, 1008] (dropout is off at eval)
        return pool3, logits


def init_params(config: InceptionConfig, rng: jax.Array) -> Any:
    """Fresh params (pure: works under jax.eval_shape, which is how the converter gets the expected tree)."""
    dummy = jnp.zeros((1, config.image_size, config.image_size, 3), jnp.float32)
    return FIDInceptionV3(config).init(rng, dummy)["params"]


# ---- input transform -------------------------------------------------------------------------------------------------
def bilinear_weights(in_size: int, out_size: int) -> np.ndarray:
    """[out_size, in_size] matrix of torch's bilinear resize along one axis (align_corners=False, no antialias):
    source (i + 0.5) * in/out - 0.5 clamped at 0, two taps, the upper one clamped to the border."""
    scale = in_size / out_size
    src = np.maximum((np.arange(out_size) + 0.5) * scale - 0.5, 0.0)
    low = np.minimum(np.floor(src).astype(np.int64), in_size - 1)
    high = np.minimum(low + 1, in_size - 1)
    frac = src - low
    weights = np.zeros((out_size, in_size), np.float64)
    np.add.at(weights, (np.arange(out_size), low), 1.0 - frac)
    np.add.at(weights, (np.arange(out_size), high), frac)
    return weights.astype(np.float32)


def resize_bilinear(images: jax.Array, size: int) -> jax.Array:
    """[b, h, w, c] -> [b, size, size, c] with torch's F.interpolate(mode="bilinear", align_corners=False)."""
    _, h, w, _ = images.shape
    if (h, w) == (size, size):
        return images
    rows, cols = jnp.asarray(bilinear_weights(h, size)), jnp.asarray(bilinear_weights(w, size))
    highest = jax.lax.Precision.HIGHEST
    images = jnp.einsum("yh,bhwc->bywc", rows, images, precision=highest)   # [b, size, w, c]
    return jnp.einsum("xw,bywc->byxc", cols, images, precision=highest)     # [b, size, size, c]


@jax.jit
def features(config: InceptionConfig, params: Any, images: jax.Array) -> tuple[jax.Array, jax.Array]:
    """images [b, h, w, 3] float in [0, 1] (NHWC) -> (pool3 [b, 2048/d], logits [b, num_classes]), float32."""
    x = resize_bilinear(images.astype(jnp.float32), config.image_size)
    x = 2.0 * x - 1.0  # pytorch-fid normalize_input: [0, 1] -> [-1, 1]
    return FIDInceptionV3(config).apply({"params": params}, x)
