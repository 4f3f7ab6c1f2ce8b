"""The demo's analytic VAE: encode = 2x2 average pooling, decode = nearest upsampling, through the real VAE code."""

import numpy as np
import pytest

from mvrag_jax.demo.pixel_vae import PixelVAEConfigError, demo_vae_config, pixel_vae_params
from mvrag_jax.models import vae


@pytest.mark.parametrize("levels,width", [(2, 32), (3, 32), (3, 8)])  # (3, 8): the demo's
def test_pixel_vae_pools_and_upsamples(levels, width):
    config = demo_vae_config(vae.VAEConfig(), levels=levels, width=width)
    params = pixel_vae_params(config)
    f = config.downscale_factor
    image = np.random.default_rng(levels).uniform(-1, 1, (2, 8 * f, 8 * f, 3)).astype(np.float32)
    mean, logvar = vae.encode(config, params, image)
    pooled = image.reshape(2, 8, f, 8, f, 3).mean((2, 4))
    np.testing.assert_allclose(np.asarray(mean)[..., :3], pooled, atol=1e-4)
    assert np.all(np.asarray(mean)[..., 3] == 0) and float(np.max(logvar)) == -30.0
    decoded = np.asarray(vae.decode(config, params, mean))
    np.testing.assert_allclose(decoded, np.repeat(np.repeat(pooled, f, 1), f, 2), atol=1e-4)


def test_pixel_vae_refuses_small_norm_groups():
    with pytest.raises(PixelVAEConfigError, match="channels per norm group"):
        pixel_vae_params(vae.VAEConfig(block_out_channels=(32, 64), norm_num_groups=32))
