"""LPIPS (Zhang et al. 2018, the `lpips` package, version 0.1, net='vgg'): the perceptual distance of the paper's
Table 3.

    images in [-1, 1] -> ScalingLayer ((x - shift) / scale) -> torchvision VGG16 `features` -> the ReLU outputs
    relu1_2, relu2_2, relu3_3, relu4_3, relu5_3 -> each unit-normalised over channels (x / (||x|| + 1e-10)) ->
    squared difference of the two images -> lin<k> (1x1 conv to 1 channel, no bias) -> mean over space -> summed

Param paths mirror the two released state dicts: torchvision's `vgg16-397923af.pth` (`features.<i>.weight/bias`;
its `classifier.*` is not used) and lpips' `weights/v0.1/vgg.pth` (`lin<k>.model.1.weight`; model.0 is a dropout).
`width_divisor` shrinks every VGG width for tiny test models.
"""

import dataclasses
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from mvrag_jax.models.layers import conv

# torchvision vgg16 `features` (cfg "D"): conv widths, "M" = 2x2 max pool; the index of each module in features.
VGG16 = (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M")
TAPS = (3, 8, 15, 22, 29)  # features indices of relu1_2, relu2_2, relu3_3, relu4_3, relu5_3 (LPIPS' slices)
SHIFT = (-0.030, -0.088, -0.188)
SCALE = (0.458, 0.448, 0.450)
EPS = 1e-10


@jax.tree_util.register_static
@dataclasses.dataclass(frozen=True)
class LPIPSConfig:
    width_divisor: int = 1

    def __post_init__(self):
        if self.width_divisor < 1 or 64 % self.width_divisor:
            raise ValueError(f"LPIPSConfig.width_divisor={self.width_divisor} must divide 64")

    def layers(self) -> list[tuple[int, int | str]]:
        """(features index, width or "M") of every conv and pool, in torchvision's numbering (ReLUs take the
        indices in between)."""
        out, index = [], 0
        for item in VGG16:
            out.append((index, item if item == "M" else item // self.width_divisor))
            index += 1 if item == "M" else 2
        return out


class NetLinLayer(nn.Module):
    """lpips' NetLinLayer at eval: model = Sequential(Dropout, Conv2d(c, 1, 1, bias=False)); index 1 is the conv."""

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        return conv(1, 1, padding=0, use_bias=False, name="model_1")(x)


class LPIPS(nn.Module):
    """(a, b) NHWC in [-1, 1], same shape -> distance [n]."""

    config: LPIPSConfig

    def features(self, x: jax.Array) -> list[jax.Array]:
        x = (x - jnp.asarray(SHIFT)) / jnp.asarray(SCALE)
        taps = []
        for index, width in self.config.layers():
            if width == "M":
                x = nn.max_pool(x, (2, 2), strides=(2, 2))
                continue
            x = jax.nn.relu(conv(width, 3, name=f"features_{index}")(x))
            if index + 1 in TAPS:
                taps.append(x)
        return taps

    @nn.compact
    def __call__(self, a: jax.Array, b: jax.Array) -> jax.Array:
        n = a.shape[0]
        feats = self.features(jnp.concatenate([a, b]))  # one pass over both images (shared weights)
        total = jnp.zeros((n,), jnp.float32)
        for k, f in enumerate(feats):
            unit = f / (jnp.sqrt(jnp.sum(f * f, axis=-1, keepdims=True)) + EPS)
            total = total + jnp.mean(NetLinLayer(name=f"lin{k}")((unit[:n] - unit[n:]) ** 2), axis=(1, 2, 3))
        return total


def init_params(config: LPIPSConfig, rng: jax.Array, size: int = 32) -> Any:
    x = jnp.zeros((1, size, size, 3))
    return LPIPS(config).init(rng, x, x)["params"]


def distance(config: LPIPSConfig, params: Any, a: jax.Array, b: jax.Array) -> jax.Array:
    """LPIPS distance [n] of NHWC images in [-1, 1]."""
    return LPIPS(config).apply({"params": params}, a, b)
