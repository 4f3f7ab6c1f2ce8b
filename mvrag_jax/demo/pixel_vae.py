"""An analytic autoencoder in the AutoencoderKL layout: 2x2 average pooling down, nearest-neighbour up.

The demo trains a tiny random model for a few minutes. A random VAE is useless there: its decoder does not invert its
encoder, so even perfectly denoised latents decode to noise and no colour the model learned could show. Training a VAE
first would cost minutes; instead these weights make the unchanged SD VAE architecture (our `models/vae.py`, and
diffusers' AutoencoderKL after export) compute

    latents = avgpool(image)[..., :3] padded to latent_channels;   decode(latents) = upsample_nearest(latents[..., :3])

to within ~1e-3, so decoded colours are the colours the UNet produced.

How each part becomes (near) identity:
- every resnet's conv2 and the mid attention's to_out are zero, so those residual blocks pass their input through;
- conv_in writes RGB to channels 0-2, two constants +K / -K (K = 1000) to channels 3-4 through its bias, and
  -(R + G + B) to channel 5; they ride along all blocks;
- the one place a nonlinearity cannot be skipped is conv_norm_out (GroupNorm + SiLU). With channels 0-4 in one norm
  group, the constants dominate its statistics, so the group's std is K * sqrt(2 / group_size) whatever the image and
  the norm is an affine map we undo with its scale (channel 5 makes every pixel's channels sum to zero, so the
  group mean is exactly 0); its bias shifts the colours by SHIFT so SiLU(x) = x * sigmoid(x) is the identity to
  ~1e-7, and conv_out subtracts SHIFT again;
- Downsample2D's stride-2 conv averages its 2x2 window; Upsample2D's conv is the identity tap.
"""

import dataclasses
from typing import Any

import flax.linen as nn
import jax
import numpy as np

from mvrag_jax.models import vae
from mvrag_jax.errors import MvragError

CONSTANT = 1000.0      # K: the two constant channels that dominate conv_norm_out's statistics
SHIFT = 20.0           # moves colours where SiLU is linear: sigmoid(19) = 1 - 5.6e-9
LOGVAR = -30.0         # the posterior clamp's lower end: sampling returns the mean
_RGB, _PLUS, _MINUS, _BALANCE = (0, 1, 2), 3, 4, 5
_CARRIED = 6           # channels 0-5 must pass through every block


class PixelVAEConfigError(MvragError, ValueError):
    """The VAE sizes cannot carry the pooling autoencoder."""


def demo_vae_config(base: vae.VAEConfig, levels: int, width: int = 32) -> vae.VAEConfig:
    """A small VAE config with `levels` resolution levels (downscale 2**(levels-1)) and one norm group."""
    return dataclasses.replace(base, block_out_channels=(width,) * levels, layers_per_block=1, norm_num_groups=1,
                               latent_channels=4, scaling_factor=1.0, in_channels=3, out_channels=3)


def _group_size(config: vae.VAEConfig) -> int:
    sizes = {c // config.norm_num_groups for c in config.block_out_channels}
    if min(config.block_out_channels) < _CARRIED or min(sizes) < _CARRIED:
        raise PixelVAEConfigError(
            f"block_out_channels={config.block_out_channels} with norm_num_groups={config.norm_num_groups}: the pixel "
            f"VAE needs >= {_CARRIED} channels per norm group; use demo_vae_config() (one norm group)")
    if config.latent_channels < 3 or config.in_channels != 3 or config.out_channels != 3:
        raise PixelVAEConfigError("the pixel VAE needs RGB in/out and >= 3 latent channels")
    return min(sizes)


def _identity_1x1(cin: int, cout: int, channels: int = _CARRIED) -> np.ndarray:
    kernel = np.zeros((1, 1, cin, cout), np.float32)
    for c in range(min(channels, cin, cout)):
        kernel[0, 0, c, c] = 1.0
    return kernel


def _centre_tap(cin: int, cout: int, channels) -> np.ndarray:
    kernel = np.zeros((3, 3, cin, cout), np.float32)
    for c in channels:
        kernel[1, 1, c, c] = 1.0
    return kernel


def _colours_in(cin: int, cout: int) -> np.ndarray:
    """conv_in: colours to channels 0-2 and their negated sum to the balance channel."""
    kernel = _centre_tap(cin, cout, _RGB)
    kernel[1, 1, list(_RGB), _BALANCE] = -1.0
    return kernel


def _pool_2x2(channels: int) -> np.ndarray:
    """Downsample2D pads (0, 1, 0, 1) then convolves 3x3 with stride 2 and no padding: taps (0..1, 0..1) average."""
    kernel = np.zeros((3, 3, channels, channels), np.float32)
    for c in range(channels):
        kernel[0:2, 0:2, c, c] = 0.25
    return kernel


def _affine_norm(channels: int, group_size: int) -> dict[str, np.ndarray]:
    """conv_norm_out: undo the normalisation on RGB, add SHIFT before SiLU; the constants are dropped."""
    scale, bias = np.zeros(channels, np.float32), np.zeros(channels, np.float32)
    scale[list(_RGB)] = CONSTANT * np.sqrt(2.0 / group_size)
    bias[list(_RGB)] = SHIFT
    return {"scale": scale, "bias": bias}


def pixel_vae_params(config: vae.VAEConfig) -> dict[str, Any]:
    """Float32 numpy params (our Flax layout) of the pooling autoencoder for `config` (see the module docstring)."""
    group_size = _group_size(config)
    shapes = nn.unbox(jax.eval_shape(vae.init_params, config, jax.random.key(0)))  # nothing allocated

    def fill(path: tuple[str, ...], shape: tuple[int, ...]) -> np.ndarray:
        leaf, module = path[-1], path[:-1]
        joined = "/".join(module)
        if leaf == "scale":
            if module[-1] == "conv_norm_out":
                return _affine_norm(shape[0], group_size)["scale"]
            return np.ones(shape, np.float32)
        if leaf == "bias":
            if module[-1] == "conv_norm_out":
                return _affine_norm(shape[0], group_size)["bias"]
            if module[-1] == "conv_in":
                bias = np.zeros(shape, np.float32)
                bias[_PLUS], bias[_MINUS] = CONSTANT, -CONSTANT
                return bias
            if module[-1] == "conv_out" and module[0] == "decoder":
                return np.full(shape, -SHIFT, np.float32)
            if module[-1] == "conv_out":  # encoder: mean = RGB - SHIFT + SHIFT; logvar pinned low
                bias = np.zeros(shape, np.float32)
                bias[:3] = -SHIFT
                bias[config.latent_channels:] = LOGVAR
                return bias
            return np.zeros(shape, np.float32)
        # kernels
        if module[-1] in ("conv2", "to_out_0", "conv1", "to_q", "to_k", "to_v"):
            return np.zeros(shape, np.float32)  # residual branches off: the blocks pass their input through
        if module[-1] == "conv_shortcut":
            return _identity_1x1(shape[2], shape[3])
        if module[-1] in ("quant_conv", "post_quant_conv"):
            return _identity_1x1(shape[2], shape[3], channels=shape[3])
        if module[-1] == "conv_in":  # encoder: image colours; decoder: latents 0-2 are the colours
            return _colours_in(shape[2], shape[3])
        if "downsamplers_0" in joined:
            return _pool_2x2(shape[2])
        if "upsamplers_0" in joined:
            return _centre_tap(shape[2], shape[3], range(_CARRIED))
        if module[-1] == "conv_out":
            return _centre_tap(shape[2], shape[3], _RGB)
        raise PixelVAEConfigError(f"pixel VAE has no rule for {'/'.join(path)}")

    def walk(tree: Any, path: tuple[str, ...]) -> Any:
        if isinstance(tree, dict):
            return {k: walk(v, path + (k,)) for k, v in tree.items()}
        return fill(path, tuple(tree.shape))

    return walk(shapes, ())
