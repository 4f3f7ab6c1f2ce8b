"""LGM (Tang et al. 2024, github 3DTopia/LGM) in Flax: 4 views + Plücker rays -> one 3D Gaussian per output pixel.

The network is LGM's asymmetric U-Net (`core/unet.py`) followed by a 1x1 conv and per-channel activations
(`core/models.py` `LGM.forward_gaussians`). Param paths are the released state-dict keys
(`model_fp16_fixrot.safetensors`): `unet.down_blocks.0.nets.1.conv1.weight` -> `unet/down_blocks_0/nets_1/conv1/kernel`,
`unet.mid_block.attns.0.attn.qkv.weight` -> `unet/mid_block/attns_0/attn/qkv/kernel`, `conv.weight` -> `conv/kernel`.

Semantics copied from the official modules (NHWC here, NCHW there):
- ResnetBlock: GN(32, eps 1e-5) -> SiLU -> conv3x3 -> GN -> SiLU -> conv3x3, plus the input through a 1x1 `shortcut`
  when channels change, all times `skip_scale` (sqrt(0.5) in the U-Net).
- MVAttention: GN, then ONE self-attention over the tokens of all 4 views of an object (16 heads, qkv without bias,
  proj with bias), residual, times skip_scale. This cross-view attention is what makes the views agree.
- DownBlock: `layers_per_block` (resnet, attention?) pairs, each output kept as a skip; then (except the last block)
  a stride-2 conv3x3 `downsample` whose output is a skip too. MidBlock: nets_0, then (attns_0, nets_1).
- UpBlock: `layers_per_block + 1` (concat a skip, resnet, attention?) steps, then (except the last block) nearest x2
  and conv3x3 `upsample`. With fewer up blocks than down blocks (the "big" config: 6 down, 5 up) the output grid is
  input_size / 2: 256 px views -> 128 x 128 Gaussians per view.
- Output channels (14): pos 0:3 clamp(-1, 1); opacity 3 sigmoid; scale 4:7 0.1 * softplus; rotation 7:11 L2-normalised
  quaternion (w, x, y, z); rgb 11:14 0.5 * tanh + 0.5. Gaussians are ordered (view, row, column) as LGM's permute.

Entry points: `init_params(config, rng)`, `forward_gaussians(config, params, inputs)` ([b, 4, H, W, 9] -> [b, N, 14])
and `raw_features` (before the activations, for parity checks).
"""

import dataclasses
from typing import Any, Mapping

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from mvrag_jax.models.config import check_compute_dtype
from mvrag_jax.models import layers
from mvrag_jax.models.layers import attention, conv, dense, group_norm
from mvrag_jax.sharding import ACT_EMBED, BATCH, EMBED, HEADS
from mvrag_jax.errors import MvragError

IN_CHANNELS = 9    # RGB (ImageNet-normalised) + Plücker ray embedding (o x d, d)
OUT_CHANNELS = 14  # pos 3, opacity 1, scale 3, rotation 4, rgb 3
NUM_VIEWS = 4      # MVAttention hard-codes num_frames=4 ("WARN: hardcoded!" in the official code)
GROUP_NORM_EPS = 1e-5
SKIP_SCALE = float(np.sqrt(0.5))


class LGMConfigError(MvragError, ValueError):
    """An LGM config is inconsistent or does not match a checkpoint."""


@jax.tree_util.register_static
@dataclasses.dataclass(frozen=True)
class LGMConfig:
    """Sizes of the LGM network; defaults are the released "big" config (`core/options.py` config_defaults['big'])."""

    input_size: int = 256
    down_channels: tuple[int, ...] = (64, 128, 256, 512, 1024, 1024)
    down_attention: tuple[bool, ...] = (False, False, False, True, True, True)
    mid_attention: bool = True
    up_channels: tuple[int, ...] = (1024, 1024, 512, 256, 128)
    up_attention: tuple[bool, ...] = (True, True, True, False, False)
    layers_per_block: int = 2
    attention_heads: int = 16  # the official blocks' default, never overridden by the U-Net
    groups: int = 32           # every GroupNorm of the official U-Net
    dtype: str = "float32"     # compute dtype: float32 | bfloat16 (params stay float32)

    def __post_init__(self):
        check_compute_dtype(self.dtype, "lgm", LGMConfigError)
        if len(self.down_channels) != len(self.down_attention) or len(self.up_channels) != len(self.up_attention):
            raise LGMConfigError(f"lgm: {len(self.down_channels)} down_channels vs {len(self.down_attention)} "
                                 f"down_attention, {len(self.up_channels)} up_channels vs {len(self.up_attention)} "
                                 "up_attention; each level needs one attention flag")
        if not 1 <= len(self.up_channels) <= len(self.down_channels):
            raise LGMConfigError(f"lgm: {len(self.up_channels)} up blocks for {len(self.down_channels)} down blocks; "
                                 "the U-Net needs 1..len(down_channels) up blocks")
        uneven = [c for c in (*self.down_channels, *self.up_channels) if c % self.groups or c % self.attention_heads]
        if uneven:
            raise LGMConfigError(f"lgm channels {uneven} are not multiples of groups={self.groups} and "
                                 f"heads={self.attention_heads}; GroupNorm and attention need whole groups/heads")
        if self.input_size % 2 ** (len(self.down_channels) - 1):
            raise LGMConfigError(f"lgm input_size {self.input_size} is not divisible by "
                                 f"{2 ** (len(self.down_channels) - 1)} (one halving per down block but the last)")

    @property
    def splat_size(self) -> int:
        """Side of each view's Gaussian grid (official `opt.splat_size`, which it asks the user to keep consistent)."""
        return self.input_size // 2 ** (len(self.down_channels) - 1) * 2 ** (len(self.up_channels) - 1)

    @property
    def num_gaussians(self) -> int:
        return NUM_VIEWS * self.splat_size ** 2

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, raw: Mapping[str, Any]) -> "LGMConfig":
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(raw) - known)
        if unknown:
            raise LGMConfigError(f"lgm config has unknown fields {unknown}; known: {', '.join(sorted(known))}")
        tuples = {k: tuple(v) for k, v in raw.items() if isinstance(v, (list, tuple))}
        return cls(**{**raw, **tuples})

    @classmethod
    def from_shapes(cls, shapes: Mapping[str, tuple[int, ...]], input_size: int = 256,
                    dtype: str = "float32") -> "LGMConfig":
        """Sizes read from a checkpoint's tensor shapes (torch layout); the released file has no config.

        `input_size` cannot be read from weights (the U-Net is fully convolutional); LGM's configs all use 256.
        """
        def count(prefix: str) -> int:
            n = 0
            while any(k.startswith(f"{prefix}.{n}.") for k in shapes):
                n += 1
            return n

        try:
            down_n, up_n = count("unet.down_blocks"), count("unet.up_blocks")
            layers = count("unet.down_blocks.0.nets")
            down = tuple(shapes[f"unet.down_blocks.{i}.nets.0.conv1.weight"][0] for i in range(down_n))
            up = tuple(shapes[f"unet.up_blocks.{i}.nets.0.conv1.weight"][0] for i in range(up_n))
        except KeyError as e:
            raise LGMConfigError(f"checkpoint has no {e.args[0]}; is it an LGM state dict (keys unet.*, conv.*)?") from e
        if not down_n or not up_n:
            raise LGMConfigError("checkpoint has no unet.down_blocks / unet.up_blocks keys; pass an LGM checkpoint "
                                 "(e.g. model_fp16_fixrot.safetensors)")
        attn = lambda block: any(k.startswith(f"{block}.attns.") for k in shapes)
        return cls(input_size=input_size, down_channels=down,
                   down_attention=tuple(attn(f"unet.down_blocks.{i}") for i in range(down_n)),
                   mid_attention=attn("unet.mid_block"), up_channels=up,
                   up_attention=tuple(attn(f"unet.up_blocks.{i}") for i in range(up_n)), layers_per_block=layers,
                   dtype=dtype)


def _constrain(x: jax.Array) -> jax.Array:
    return nn.with_logical_constraint(x, (BATCH, None, None, ACT_EMBED))  # [b*v, h, w, c]


def ResnetBlock(out_channels: int, groups: int, dtype: Any, name: str) -> nn.Module:
    """LGM's ResnetBlock: the shared block (layers.py) with eps 1e-5, a 1x1 `shortcut` and the sqrt(1/2) skip."""
    return layers.ResnetBlock(out_channels, groups, GROUP_NORM_EPS, "shortcut", SKIP_SCALE, dtype=dtype, name=name)


class Attention(nn.Module):
    """The official `MemEffAttention`: fused qkv Linear (no bias), softmax attention, proj Linear."""

    heads: int
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        c = x.shape[-1]
        qkv = dense(3 * c, (EMBED, HEADS), use_bias=False, dtype=self.dtype, name="qkv")(x)  # [b, n, 3c]
        # torch reshapes qkv to [b, n, 3, heads, dh]: q, k, v are the three contiguous thirds.
        q, k, v = jnp.split(qkv, 3, axis=-1)
        out = attention(q, k, v, self.heads)                                                # [b, n, c]
        return dense(c, (HEADS, EMBED), dtype=self.dtype, name="proj")(out)


class MVAttention(nn.Module):
    heads: int
    groups: int
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        bv, height, width, c = x.shape
        h = group_norm(self.groups, GROUP_NORM_EPS, dtype=self.dtype, name="norm")(x)
        h = h.reshape(bv // NUM_VIEWS, NUM_VIEWS * height * width, c)                       # [b, v*h*w, c]
        h = Attention(self.heads, self.dtype, name="attn")(h)
        return (h.reshape(bv, height, width, c) + x) * SKIP_SCALE


class DownBlock(nn.Module):
    out_channels: int
    num_layers: int
    downsample: bool
    use_attention: bool
    heads: int
    groups: int
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> tuple[jax.Array, list[jax.Array]]:
        skips = []
        for i in range(self.num_layers):
            x = ResnetBlock(self.out_channels, self.groups, self.dtype, name=f"nets_{i}")(x)
            if self.use_attention:
                x = MVAttention(self.heads, self.groups, self.dtype, name=f"attns_{i}")(x)
            skips.append(x)
        if self.downsample:
            x = conv(self.out_channels, 3, stride=2, dtype=self.dtype, name="downsample")(x)  # [bv, h/2, w/2, c]
            skips.append(x)
        return _constrain(x), skips


class MidBlock(nn.Module):
    channels: int
    use_attention: bool
    heads: int
    groups: int
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        x = ResnetBlock(self.channels, self.groups, self.dtype, name="nets_0")(x)
        if self.use_attention:
            x = MVAttention(self.heads, self.groups, self.dtype, name="attns_0")(x)
        return ResnetBlock(self.channels, self.groups, self.dtype, name="nets_1")(x)


class UpBlock(nn.Module):
    out_channels: int
    num_layers: int
    upsample: bool
    use_attention: bool
    heads: int
    groups: int
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, skips: list[jax.Array]) -> jax.Array:
        for i in range(self.num_layers):
            x = jnp.concatenate([x, skips[-1 - i]], axis=-1)  # the newest skip first, as the official pop order
            x = ResnetBlock(self.out_channels, self.groups, self.dtype, name=f"nets_{i}")(x)
            if self.use_attention:
                x = MVAttention(self.heads, self.groups, self.dtype, name=f"attns_{i}")(x)
        if self.upsample:
            x = jnp.repeat(jnp.repeat(x, 2, axis=1), 2, axis=2)                              # [bv, 2h, 2w, c]
            x = conv(self.out_channels, 3, dtype=self.dtype, name="upsample")(x)
        return _constrain(x)


class UNet(nn.Module):
    config: LGMConfig

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        cfg, dtype = self.config, jnp.dtype(self.config.dtype)
        kw = dict(heads=cfg.attention_heads, groups=cfg.groups, dtype=dtype)
        x = conv(cfg.down_channels[0], 3, dtype=dtype, name="conv_in")(x)
        skips = [x]
        for i, channels in enumerate(cfg.down_channels):
            x, block_skips = DownBlock(channels, cfg.layers_per_block, i != len(cfg.down_channels) - 1,
                                       cfg.down_attention[i], **kw, name=f"down_blocks_{i}")(x)
            skips += block_skips
        x = MidBlock(cfg.down_channels[-1], cfg.mid_attention, **kw, name="mid_block")(x)
        for i, channels in enumerate(cfg.up_channels):
            n = cfg.layers_per_block + 1
            block_skips, skips = skips[-n:], skips[:-n]
            x = UpBlock(channels, n, i != len(cfg.up_channels) - 1, cfg.up_attention[i], **kw,
                        name=f"up_blocks_{i}")(x, block_skips)
        x = nn.silu(group_norm(cfg.groups, GROUP_NORM_EPS, dtype=dtype, name="norm_out")(x))
        return conv(OUT_CHANNELS, 3, dtype=dtype, name="conv_out")(x)


class LGM(nn.Module):
    """[b * 4, H, W, 9] -> raw Gaussian features [b * 4, splat, splat, 14] (before the activations)."""

    config: LGMConfig

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        x = UNet(self.config, name="unet")(x)
        return conv(OUT_CHANNELS, 1, dtype=jnp.dtype(self.config.dtype), name="conv")(x).astype(jnp.float32)


def init_params(config: LGMConfig, rng: jax.Array) -> Any:
    """The (logically boxed) `params` of a fresh LGM; pure, so it works under jax.eval_shape."""
    dummy = jnp.zeros((NUM_VIEWS, config.input_size, config.input_size, IN_CHANNELS), jnp.float32)
    return LGM(config).init(rng, dummy)["params"]


def _check_inputs(config: LGMConfig, inputs: jax.Array) -> None:
    expected = (NUM_VIEWS, config.input_size, config.input_size, IN_CHANNELS)
    if inputs.ndim != 5 or tuple(inputs.shape[1:]) != expected:
        raise LGMConfigError(f"LGM inputs have shape {tuple(inputs.shape)}; expected [b, {', '.join(map(str, expected))}]"
                             " (4 views, NHWC, ImageNet-normalised RGB then 6 Plücker channels: recon.cameras)")


@jax.jit
def raw_features(config: LGMConfig, params: Any, inputs: jax.Array) -> jax.Array:
    """inputs [b, 4, H, W, 9] -> pre-activation features [b, 4 * splat * splat, 14], ordered (view, row, column)."""
    _check_inputs(config, inputs)
    b = inputs.shape[0]
    x = LGM(config).apply({"params": params}, inputs.reshape(b * NUM_VIEWS, *inputs.shape[2:]))  # [b*4, s, s, 14]
    return x.reshape(b, -1, OUT_CHANNELS)


def activate(x: jax.Array) -> jax.Array:
    """LGM's activations on raw features [..., 14] -> Gaussians [..., 14] (pos, opacity, scale, rotation, rgb)."""
    x = x.astype(jnp.float32)
    pos = jnp.clip(x[..., 0:3], -1.0, 1.0)
    opacity = jax.nn.sigmoid(x[..., 3:4])
    scale = 0.1 * jax.nn.softplus(x[..., 4:7])
    rot = x[..., 7:11]
    # F.normalize: x / max(||x||, 1e-12)
    rot = rot / jnp.maximum(jnp.linalg.norm(rot, axis=-1, keepdims=True), 1e-12)
    rgb = 0.5 * jnp.tanh(x[..., 11:14]) + 0.5
    return jnp.concatenate([pos, opacity, scale, rot, rgb], axis=-1)


@jax.jit
def forward_gaussians(config: LGMConfig, params: Any, inputs: jax.Array) -> jax.Array:
    """inputs [b, 4, H, W, 9] -> Gaussians [b, 4 * splat * splat, 14] (official `LGM.forward_gaussians`)."""
    return activate(raw_features(config, params, inputs))
