"""mvrag_jax/diffusion/ddim.py: the scheduler tables against the official fixtures, the step maths, config errors."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mvrag_jax.inputs.release import Release
from mvrag_jax.diffusion import ddim
from tests.conftest import TINY_RELEASE, load_case

RELEASE_CONFIG = json.loads((TINY_RELEASE / "scheduler" / "scheduler_config.json").read_text())


@pytest.fixture(scope="module")
def case() -> dict[str, np.ndarray]:
    return load_case("ddim_sample")


@pytest.fixture(scope="module")
def schedule() -> ddim.DDIMSchedule:
    return ddim.DDIMSchedule.from_release(Release.open(TINY_RELEASE))


def _release_with_scheduler(tmp_path, **overrides) -> Release:
    (tmp_path / "scheduler").mkdir()
    (tmp_path / "model_index.json").write_text("{}")
    (tmp_path / "scheduler" / "scheduler_config.json").write_text(json.dumps({**RELEASE_CONFIG, **overrides}))
    return Release.open(tmp_path)


def test_schedule_reads_the_release_config(schedule):
    assert (schedule.num_train_timesteps, schedule.beta_schedule, schedule.set_alpha_to_one) == (
        1000, "scaled_linear", False)
    assert (schedule.beta_start, schedule.beta_end, schedule.steps_offset) == (0.00085, 0.012, 1)


def test_alphas_cumprod_equals_the_official_table_bit_for_bit(schedule, case):
    table = ddim.alphas_cumprod(schedule)
    assert table.dtype == np.float32
    np.testing.assert_array_equal(table, case["alphas_cumprod"])


def test_timesteps_equal_the_official_ones(schedule, case):
    steps = int(case["num_inference_steps"])
    for tag in ("ip", "noip"):
        np.testing.assert_array_equal(ddim.timesteps(schedule, steps), case[f"{tag}_timesteps"])
    # prev_t = t - T // N; the last step lands below 0 and so uses the final alpha
    np.testing.assert_array_equal(ddim.previous_timesteps(schedule, steps), case["ip_timesteps"] - 1000 // steps)
    assert ddim.previous_timesteps(schedule, steps)[-1] < 0


def test_final_alpha_follows_set_alpha_to_one(schedule):
    assert ddim.final_alpha(schedule) == ddim.alphas_cumprod(schedule)[0]
    assert ddim.final_alpha(ddim.DDIMSchedule(**{**schedule.__dict__, "set_alpha_to_one": True})) == 1.0


def test_linear_betas_run_from_start_to_end():
    schedule = ddim.DDIMSchedule(num_train_timesteps=10, beta_start=0.001, beta_end=0.02, beta_schedule="linear")
    betas = ddim.betas(schedule)
    assert betas[0] == np.float32(0.001) and betas[-1] == np.float32(0.02)
    np.testing.assert_allclose(betas, np.linspace(0.001, 0.02, 10), rtol=1e-6)


def _noised(x0, eps, alpha):
    return np.sqrt(alpha) * x0 + np.sqrt(1.0 - alpha) * eps  # forward noising q(x_t | x0) with known eps


def test_step_with_the_true_noise_lands_on_the_forward_noised_sample(schedule):
    table = ddim.alphas_cumprod(schedule)
    rng = np.random.default_rng(0)
    x0, eps = rng.standard_normal((2, 3, 4, 4, 2)).astype(np.float32)
    step = jax.jit(ddim.ddim_step)
    for t, t_prev in ((801, 601), (401, 201), (201, 1)):
        x_t = _noised(x0, eps, table[t])
        x_prev = step(x_t, eps, jnp.int32(t), jnp.int32(t_prev), table, ddim.final_alpha(schedule))
        np.testing.assert_allclose(x_prev, _noised(x0, eps, table[t_prev]), atol=2e-5)


def test_step_past_zero_uses_the_final_alpha(schedule):
    table = ddim.alphas_cumprod(schedule)
    rng = np.random.default_rng(1)
    x0, eps = rng.standard_normal((2, 5)).astype(np.float32)
    x_t = _noised(x0, eps, table[1])
    step = jax.jit(ddim.ddim_step)  # t_prev traced: the negative branch must work inside the compiled loop
    x_prev = step(x_t, eps, jnp.int32(1), jnp.int32(-199), table, ddim.final_alpha(schedule))
    np.testing.assert_allclose(x_prev, _noised(x0, eps, table[0]), atol=2e-5)
    # set_alpha_to_one: the last step returns the clean sample itself
    np.testing.assert_allclose(step(x_t, eps, jnp.int32(1), jnp.int32(-199), table, np.float32(1.0)), x0, atol=2e-5)


def test_unsupported_prediction_type_is_an_error_naming_the_fix(tmp_path):
    release = _release_with_scheduler(tmp_path, prediction_type="v_prediction")
    with pytest.raises(ddim.SchedulerConfigError, match="prediction_type='v_prediction'.*epsilon"):
        ddim.DDIMSchedule.from_release(release)


@pytest.mark.parametrize("overrides, message", [
    ({"timestep_spacing": "trailing"}, "timestep_spacing='trailing'"),
    ({"beta_schedule": "squaredcos_cap_v2"}, "beta_schedule='squaredcos_cap_v2'"),
    ({"thresholding": True}, "thresholding=True"),
    ({"trained_betas": [0.1, 0.2]}, "trained_betas"),
])
def test_other_unsupported_options_are_errors(overrides, message):
    with pytest.raises(ddim.SchedulerConfigError, match=message):
        ddim.DDIMSchedule.from_config({**RELEASE_CONFIG, **overrides})


def test_release_overrides_match_the_official_pipeline(tmp_path):
    # MVRAGPipeline.__init__ rewrites outdated configs: steps_offset -> 1 and clip_sample -> False
    schedule = ddim.DDIMSchedule.from_release(_release_with_scheduler(tmp_path, steps_offset=0, clip_sample=True))
    assert schedule.steps_offset == 1 and schedule.clip_sample is False
    with pytest.raises(ddim.SchedulerConfigError, match="clip_sample"):
        ddim.DDIMSchedule.from_config({**RELEASE_CONFIG, "clip_sample": True})


def test_too_many_inference_steps_is_an_error(schedule):
    with pytest.raises(ddim.SchedulerConfigError, match="num_inference_steps=1001"):
        ddim.timesteps(schedule, 1001)
