"""The frozen SD2.1 VAE (diffusers AutoencoderKL) in Flax: images [-1, 1] <-> latents, NHWC inside.

Module names mirror the diffusers keys (`encoder.down_blocks.0.resnets.0.conv1.weight` ->
`encoder/down_blocks_0/resnets_0/conv1/kernel`). Semantics follow diffusers' Encoder/Decoder with DownEncoderBlock2D /
UpDecoderBlock2D: GroupNorm(norm_num_groups, eps 1e-6) + SiLU everywhere, a single-head mid-block self-attention with
a residual, Downsample2D that pads (0, 1, 0, 1) before a stride-2 3x3 conv with no padding, and Upsample2D = nearest x2
then a 3x3 conv.

Functional entry points take (config, params) as converted: `encode` -> (mean, logvar), `sample_posterior`,
`decode`, and `decode_latents` (the pipeline's z / scaling_factor -> decode -> [0, 1]).
"""

import dataclasses
from typing import Any, Mapping

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from mvrag_jax.models.config import check_compute_dtype, config_block
from mvrag_jax.models.layers import ResnetBlock, attention, conv, dense, group_norm
from mvrag_jax.sharding import ACT_EMBED, BATCH, EMBED, HEADS
from mvrag_jax.inputs.release import Release
from mvrag_jax.errors import MvragError


GROUP_NORM_EPS = 1e-6  # every diffusers VAE norm (resnets, mid attention, conv_norm_out)
LOGVAR_RANGE = (-30.0, 20.0)  # diffusers DiagonalGaussianDistribution clamps logvar to this range
SIZE_FIELDS = ("in_channels", "out_channels", "block_out_channels", "layers_per_block", "latent_channels",
               "norm_num_groups", "scaling_factor")
# The only block types the released VAE (and this port) has; anything else would be silently wrong.
_SUPPORTED = {"down_block_types": "DownEncoderBlock2D", "up_block_types": "UpDecoderBlock2D"}


class VAEConfigError(MvragError, ValueError):
    """A VAE config is missing, inconsistent, or describes blocks this port does not implement."""


@jax.tree_util.register_static  # hashable and leaf-free: pass it straight through jit / eval_shape
@dataclasses.dataclass(frozen=True)
class VAEConfig:
    """Sizes of the AutoencoderKL; defaults are the SD2.1 VAE (83,653,863 parameters)."""

    in_channels: int = 3
    out_channels: int = 3
    block_out_channels: tuple[int, ...] = (128, 256, 512, 512)
    layers_per_block: int = 2
    latent_channels: int = 4
    norm_num_groups: int = 32
    scaling_factor: float = 0.18215
    use_quant_conv: bool = True
    use_post_quant_conv: bool = True
    mid_block_add_attention: bool = True
    dtype: str = "float32"  # compute dtype: float32 | bfloat16 (params stay float32)

    def __post_init__(self):
        check_compute_dtype(self.dtype, "vae", VAEConfigError)
        if not self.block_out_channels:
            raise VAEConfigError("vae block_out_channels is empty; the SD2.1 VAE has (128, 256, 512, 512)")
        uneven = [c for c in self.block_out_channels if c % self.norm_num_groups]
        if uneven:
            raise VAEConfigError(f"vae block_out_channels {uneven} are not divisible by norm_num_groups="
                             f"{self.norm_num_groups}; GroupNorm needs whole groups, fix the config")

    @property
    def downscale_factor(self) -> int:
        """Pixels per latent along each side (the pipeline's vae_scale_factor)."""
        return 2 ** (len(self.block_out_channels) - 1)

    @classmethod
    def from_config(cls, cfg: Any) -> "VAEConfig":
        """From a full ConfigDict (configs/mvrag_sd21.py): sizes from cfg.model.vae, dtype from cfg.runtime."""
        block = config_block(cfg, "vae", SIZE_FIELDS, VAEConfigError)
        block["block_out_channels"] = tuple(int(c) for c in block.get("block_out_channels", cls.block_out_channels))
        return cls(**block, dtype=str(cfg.runtime.dtype))

    @classmethod
    def from_release(cls, release: "Release") -> "VAEConfig":
        """Sizes from the release's vae/config.json (diffusers AutoencoderKL config)."""
        raw = release.config("vae")
        if raw is None:
            raise VAEConfigError(f"{release.folder('vae')} has no config.json; copy vae/config.json from the official "
                               "release (the SD2.1 AutoencoderKL config)")
        return cls.from_diffusers_config(raw, where=f"{release.folder('vae')}/config.json")

    @classmethod
    def from_diffusers_config(cls, raw: Mapping[str, Any], where: str = "vae config") -> "VAEConfig":
        for field, block_type in _SUPPORTED.items():
            types = raw.get(field, [block_type])
            if any(t != block_type for t in types):
                raise VAEConfigError(f"{where}: {field}={types}; only {block_type} is implemented (the SD2.1 VAE)")
        if raw.get("act_fn", "silu") != "silu":
            raise VAEConfigError(f"{where}: act_fn={raw['act_fn']!r}; only 'silu' (the SD2.1 VAE) is implemented")
        defaults = cls()
        channels = tuple(int(c) for c in raw.get("block_out_channels", defaults.block_out_channels))
        if len(raw.get("down_block_types", channels)) != len(channels):
            raise VAEConfigError(f"{where}: {len(raw['down_block_types'])} down_block_types but {len(channels)} "
                               "block_out_channels; the config is inconsistent, restore it from the release")
        pick = lambda name: raw[name] if raw.get(name) is not None else getattr(defaults, name)
        return cls(
            in_channels=int(pick("in_channels")), out_channels=int(pick("out_channels")), block_out_channels=channels,
            layers_per_block=int(pick("layers_per_block")), latent_channels=int(pick("latent_channels")),
            norm_num_groups=int(pick("norm_num_groups")), scaling_factor=float(pick("scaling_factor")),
            use_quant_conv=bool(pick("use_quant_conv")), use_post_quant_conv=bool(pick("use_post_quant_conv")),
            mid_block_add_attention=bool(pick("mid_block_add_attention")))


def _constrain(x: jax.Array) -> jax.Array:
    return nn.with_logical_constraint(x, (BATCH, None, None, ACT_EMBED))  # [b, h, w, c]


def ResnetBlock2D(out_channels: int, groups: int, dtype: Any, name: str) -> nn.Module:
    """diffusers' ResnetBlock2D: the shared block (layers.py) with eps 1e-6 and a 1x1 `conv_shortcut`."""
    return ResnetBlock(out_channels, groups, GROUP_NORM_EPS, "conv_shortcut", dtype=dtype, name=name)


class MidAttention(nn.Module):
    """diffusers Attention as the VAE uses it: GN, one head over all h*w positions, to_out, residual."""

    groups: int
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        b, height, width, c = x.shape
        h = group_norm(self.groups, GROUP_NORM_EPS, dtype=self.dtype, name="group_norm")(x)
        h = h.reshape(b, height * width, c)                                                # [b, h*w, c]
        q = dense(c, (EMBED, HEADS), dtype=self.dtype, name="to_q")(h)
        k = dense(c, (EMBED, HEADS), dtype=self.dtype, name="to_k")(h)
        v = dense(c, (EMBED, HEADS), dtype=self.dtype, name="to_v")(h)
        h = attention(q, k, v, num_heads=1)                                                # [b, h*w, c]
        h = dense(c, (HEADS, EMBED), dtype=self.dtype, name="to_out_0")(h)
        return x + h.reshape(b, height, width, c)


class MidBlock(nn.Module):
    """resnets_0 -> attentions_0 -> resnets_1 at the lowest resolution."""

    channels: int
    groups: int
    add_attention: bool = True
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        x = ResnetBlock2D(self.channels, self.groups, self.dtype, name="resnets_0")(x)
        if self.add_attention:
            x = MidAttention(self.groups, self.dtype, name="attentions_0")(x)
        return ResnetBlock2D(self.channels, self.groups, self.dtype, name="resnets_1")(x)


class Downsample(nn.Module):
    """diffusers Downsample2D(padding=0): zero-pad one row at the bottom and one column at the right, then a
    stride-2 3x3 conv without padding (so odd sizes round up exactly as torch does)."""

    channels: int
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        x = jnp.pad(x, ((0, 0), (0, 1), (0, 1), (0, 0)))                                  # [b, h+1, w+1, c]
        return conv(self.channels, 3, stride=2, padding=0, dtype=self.dtype, name="conv")(x)  # [b, h/2, w/2, c]


class Upsample(nn.Module):
    """diffusers Upsample2D: nearest-neighbour x2 then a 3x3 conv."""

    channels: int
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        x = jnp.repeat(jnp.repeat(x, 2, axis=1), 2, axis=2)                                 # [b, 2h, 2w, c]
        return conv(self.channels, 3, dtype=self.dtype, name="conv")(x)


class DownEncoderBlock(nn.Module):
    """`layers_per_block` resnets, then (except in the last block) a Downsample named downsamplers_0."""

    out_channels: int
    num_layers: int
    groups: int
    add_downsample: bool
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        for j in range(self.num_layers):
            x = ResnetBlock2D(self.out_channels, self.groups, self.dtype, name=f"resnets_{j}")(x)
        if self.add_downsample:
            x = Downsample(self.out_channels, self.dtype, name="downsamplers_0")(x)
        return _constrain(x)


class UpDecoderBlock(nn.Module):
    """`layers_per_block + 1` resnets, then (except in the last block) an Upsample named upsamplers_0."""

    out_channels: int
    num_layers: int
    groups: int
    add_upsample: bool
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        for j in range(self.num_layers):
            x = ResnetBlock2D(self.out_channels, self.groups, self.dtype, name=f"resnets_{j}")(x)
        if self.add_upsample:
            x = Upsample(self.out_channels, self.dtype, name="upsamplers_0")(x)
        return _constrain(x)


class Encoder(nn.Module):
    """Image [b, H, W, in_channels] -> moments [b, H/f, W/f, 2 * latent_channels] (before quant_conv)."""

    config: VAEConfig

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        cfg, dtype = self.config, jnp.dtype(self.config.dtype)
        groups, channels = cfg.norm_num_groups, cfg.block_out_channels
        x = conv(channels[0], 3, dtype=dtype, name="conv_in")(x)
        for i, out_channels in enumerate(channels):
            downsample = i < len(channels) - 1
            x = DownEncoderBlock(out_channels, cfg.layers_per_block, groups, downsample, dtype,
                                 name=f"down_blocks_{i}")(x)
        x = MidBlock(channels[-1], groups, cfg.mid_block_add_attention, dtype, name="mid_block")(x)
        x = nn.silu(group_norm(groups, GROUP_NORM_EPS, dtype=dtype, name="conv_norm_out")(x))
        return conv(2 * cfg.latent_channels, 3, dtype=dtype, name="conv_out")(x)


class Decoder(nn.Module):
    """Latents [b, h, w, latent_channels] (after post_quant_conv) -> image [b, h*f, w*f, out_channels]."""

    config: VAEConfig

    @nn.compact
    def __call__(self, z: jax.Array) -> jax.Array:
        cfg, dtype = self.config, jnp.dtype(self.config.dtype)
        groups, channels = cfg.norm_num_groups, tuple(reversed(cfg.block_out_channels))
        x = conv(channels[0], 3, dtype=dtype, name="conv_in")(z)
        x = MidBlock(channels[0], groups, cfg.mid_block_add_attention, dtype, name="mid_block")(x)
        for i, out_channels in enumerate(channels):
            upsample = i < len(channels) - 1
            x = UpDecoderBlock(out_channels, cfg.layers_per_block + 1, groups, upsample, dtype,
                               name=f"up_blocks_{i}")(x)
        x = nn.silu(group_norm(groups, GROUP_NORM_EPS, dtype=dtype, name="conv_norm_out")(x))
        return conv(cfg.out_channels, 3, dtype=dtype, name="conv_out")(x)


class AutoencoderKL(nn.Module):
    """encoder + quant_conv and post_quant_conv + decoder. `__call__` runs both halves (used to init)."""

    config: VAEConfig

    def setup(self):
        cfg = self.config
        dtype = jnp.dtype(cfg.dtype)
        self.encoder = Encoder(cfg)
        self.decoder = Decoder(cfg)
        if cfg.use_quant_conv:
            self.quant_conv = conv(2 * cfg.latent_channels, 1, dtype=dtype)
        if cfg.use_post_quant_conv:
            self.post_quant_conv = conv(cfg.latent_channels, 1, dtype=dtype)

    def encode(self, image: jax.Array) -> tuple[jax.Array, jax.Array]:
        """image [b, H, W, c] in [-1, 1] -> (mean, logvar) [b, h, w, latent], logvar clamped as diffusers does."""
        moments = self.encoder(image)
        if self.config.use_quant_conv:
            moments = self.quant_conv(moments)                                             # [b, h, w, 2 * latent]
        mean, logvar = jnp.split(moments.astype(jnp.float32), 2, axis=-1)
        return mean, jnp.clip(logvar, *LOGVAR_RANGE)

    def decode(self, z: jax.Array) -> jax.Array:
        """latents [b, h, w, latent] (unscaled) -> image [b, H, W, c], roughly in [-1, 1]."""
        if self.config.use_post_quant_conv:
            z = self.post_quant_conv(z)
        return self.decoder(z).astype(jnp.float32)

    def __call__(self, image: jax.Array) -> jax.Array:
        mean, _ = self.encode(image)
        return self.decode(mean)


def init_params(config: VAEConfig, rng: jax.Array) -> Any:
    """The (logically boxed) `params` collection of a fresh VAE; pure, so it works under jax.eval_shape."""
    side = 2 * config.downscale_factor  # smallest image that reaches a 2x2 latent
    dummy = jnp.zeros((1, side, side, config.in_channels), jnp.float32)
    return AutoencoderKL(config).init(rng, dummy)["params"]


@jax.jit  # config is a static pytree: one compilation per config and input shape
def encode(config: VAEConfig, params: Any, image: jax.Array) -> tuple[jax.Array, jax.Array]:
    """(mean, logvar) [b, h, w, latent] of images [b, H, W, c] in [-1, 1] (NHWC)."""
    return AutoencoderKL(config).apply({"params": params}, image, method=AutoencoderKL.encode)


def posterior_std(logvar: jax.Array) -> jax.Array:
    """std = exp(logvar / 2) of the (already clamped) posterior logvar."""
    return jnp.exp(0.5 * logvar)


def sample_posterior(mean: jax.Array, logvar: jax.Array, rng: jax.Array) -> jax.Array:
    """A latent draw mean + std * eps, eps ~ N(0, 1) from the explicit key `rng`."""
    eps = jax.random.normal(rng, mean.shape, jnp.float32)
    return mean + posterior_std(logvar) * eps


@jax.jit
def decode(config: VAEConfig, params: Any, z: jax.Array) -> jax.Array:
    """Images [b, H, W, c] (about [-1, 1]) of raw latents z [b, h, w, latent] (no scaling factor applied)."""
    return AutoencoderKL(config).apply({"params": params}, z, method=AutoencoderKL.decode)


@jax.jit
def decode_latents(config: VAEConfig, params: Any, z: jax.Array) -> jax.Array:
    """The pipeline's decode: clip(decode(z / scaling_factor) / 2 + 0.5, 0, 1), images [b, H, W, c] in [0, 1]."""
    image = decode(config, params, z / config.scaling_factor)
    return jnp.clip(image / 2 + 0.5, 0.0, 1.0)


# Legacy diffusers checkpoints (before the Attention refactor) name the mid-block attention like this, sometimes
# with 1x1-conv weights [c, c, 1, 1] carried over from the original LDM code.
_LEGACY_ATTENTION_NAMES = {"query": "to_q", "key": "to_k", "value": "to_v", "proj_attn": "to_out.0"}


def normalize_keys(state_dict: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Release VAE state dict -> current diffusers names: legacy `query/key/value/proj_attn` of the mid-block
    attentions become `to_q/to_k/to_v/to_out.0`, and their [c, c, 1, 1] conv weights become [c, c] Linear weights."""
    normalized = {}
    for key, array in state_dict.items():
        parts = key.split(".")
        if ".mid_block.attentions." in f".{key}" and len(parts) >= 2 and parts[-2] in _LEGACY_ATTENTION_NAMES:
            parts[-2] = _LEGACY_ATTENTION_NAMES[parts[-2]]
            key = ".".join(parts)
        if ".mid_block.attentions." in f".{key}" and parts[-1] == "weight" and np.ndim(array) == 4:
            if tuple(np.shape(array)[2:]) != (1, 1):
                raise VAEConfigError(f"vae key {key} has shape {tuple(np.shape(array))}; a mid-block attention "
                                     "projection must be a Linear [c, c] or a 1x1 conv [c, c, 1, 1]")
            array = np.asarray(array)[:, :, 0, 0]
        if key in normalized:
            raise VAEConfigError(f"vae state dict has both the legacy and the current name of {key}; keep only one")
        normalized[key] = array
    return normalized
