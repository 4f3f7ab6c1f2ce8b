"""mvrag_jax/diffusion/sample.py: the compiled DDIM + CFG loop against the official `_sample`, and compile reuse."""

import dataclasses

import jax
import numpy as np
import pytest

from mvrag_jax.diffusion import ddim
from mvrag_jax.diffusion.sample import SampleInputError, sample, sample_jitted
from mvrag_jax.verify import run_case
from mvrag_jax.verify.arrays import nhwc
from tests.conftest import CASES, load_case

PER_RUN_ARRAYS = ("timesteps", "unet_eps", "noise_pred_cfg", "latents_per_step", "final_latents", "images")


@pytest.fixture(scope="module")
def case() -> dict[str, np.ndarray]:
    return load_case("ddim_sample")


@pytest.fixture(scope="module")
def unet(release_models, case):
    config, params = release_models.get("unet")
    return dataclasses.replace(config, num_frames=int(case["num_frames"])), params


def test_matches_official_sampling_loop_per_step(release_models):
    result = run_case("ddim_sample", release_models, CASES)
    assert result.status == "pass", result.details
    expected = {"alphas_cumprod"} | {f"{tag}_{name}" for tag in ("ip", "noip") for name in PER_RUN_ARRAYS}
    assert set(result.details) == expected


def test_same_shapes_reuse_one_compilation(release_models, unet, case):
    config, params = unet
    schedule = ddim.DDIMSchedule.from_release(release_models.release)
    latents = nhwc(case["initial_latents"])
    inputs = (case["prompt_embeds"], case["camera"], case["image_tokens"])
    # The harness's precision and trajectory flag: after the parity test this reuses its compilation.
    with jax.default_matmul_precision("highest"):
        first, _ = sample(config, params, schedule, latents, *inputs, 0.6, 5.0, 5, return_trajectory=True)
        compiled = sample_jitted._cache_size()
        # new values everywhere (latents, scale, guidance): still the same compiled loop
        second, _ = sample(config, params, schedule, latents * 0.5, *inputs, 0.9, 7.5, 5, return_trajectory=True)
        assert sample_jitted._cache_size() == compiled
    assert not np.allclose(first, second)  # the second call really ran with the new values


def test_wrong_view_count_is_an_error_naming_the_layout(unet, case):
    config, params = unet
    latents = nhwc(case["initial_latents"])[:3]  # 3 views for a 4-view config
    with pytest.raises(SampleInputError, match=r"views=4"):
        sample(config, params, ddim.DDIMSchedule(), latents, case["prompt_embeds"], case["camera"], None, 1.0, 5.0, 2)
