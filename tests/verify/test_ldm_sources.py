"""mvrag_jax/verify/ldm_sources.py: our conversion of the tiny official MVDream / ImageDream single files matches the
official code's outputs (tests/reference_configs/{mvdream,imagedream}/cases) within 1e-4 + 1e-4 |ref|; a tampered
case fails, and the ImageDream case is sensitive to its image branch."""

import dataclasses
import shutil

import jax
import numpy as np
import pytest

from mvrag_jax.models import resampler
from mvrag_jax.models.attention import FusionWeights
from mvrag_jax.models.unet import MultiViewUNet
from mvrag_jax.verify import COMPONENT_TOL, compare, run_case, run_cases
from mvrag_jax.verify.arrays import nchw, nhwc
from mvrag_jax.verify.ldm_sources import SourceModels
from tests.conftest import IMAGEDREAM_DIR, MVDREAM_DIR


@pytest.fixture(scope="module")
def results(ldm_sources):
    out = {}
    for model, folder in (("mvdream", MVDREAM_DIR), ("imagedream", IMAGEDREAM_DIR)):
        out.update({r.case: r for r in run_cases(None, folder / "cases", models=SourceModels(ldm_sources[model]))})
    return out


def test_every_official_case_passes(results):
    assert sorted(results) == ["imagedream_unet_forward_ip", "mvdream_clip_text", "mvdream_unet_forward",
                               "mvdream_vae"]
    for result in results.values():
        assert result.status == "pass", (result.case, result.details)
        assert result.tol == {"atol": COMPONENT_TOL.atol, "rtol": COMPONENT_TOL.rtol}
    assert set(results["mvdream_vae"].details) == {"posterior_mean", "posterior_logvar", "decoded"}


def test_a_tampered_case_fails(ldm_sources, tmp_path):
    shutil.copy(MVDREAM_DIR / "cases" / "mvdream_clip_text.npz", tmp_path / "mvdream_clip_text.npz")
    with np.load(tmp_path / "mvdream_clip_text.npz") as data:
        case = {k: data[k] for k in data.files}
    case["last_hidden_state"][1, 5, 7] += 1e-3  # 10x the tolerance at |ref| ~ 1, in one element
    np.savez(tmp_path / "mvdream_clip_text.npz", **case)
    result = run_case("mvdream_clip_text", SourceModels(ldm_sources["mvdream"]), tmp_path)
    assert result.status == "fail" and result.max_abs_err > 5e-4


def test_imagedream_case_needs_its_image_tokens_at_imagedreams_weight(ldm_sources):
    """Without the image tokens, or with MV-RAG's weight 0.5 on them instead of ImageDream's 1.0, the forward is far
    outside the tolerance: the case checks the image branch, not just the text path."""
    models = SourceModels(ldm_sources["imagedream"])
    config, params = models.get("unet")
    res_config, res_params = models.get("resampler")
    with np.load(IMAGEDREAM_DIR / "cases" / "imagedream_unet_forward_ip.npz") as data:
        case = {k: data[k] for k in data.files}
    config = dataclasses.replace(config, num_frames=int(case["num_frames"]))
    tokens = resampler.resample(res_config, res_params, case["ip"])
    apply = jax.jit(MultiViewUNet(config).apply)
    with jax.default_matmul_precision("highest"):
        half = apply({"params": params}, nhwc(case["x"]), case["timesteps"], case["context"], case["camera"], tokens,
                     1.0)  # out + 0.5 out_ip
        none = apply({"params": params}, nhwc(case["x"]), case["timesteps"], case["context"], case["camera"])
    for eps in (half, none):
        ok, err = compare(nchw(eps), case["eps"], COMPONENT_TOL)
        assert not ok and err > 1e-2, err
    with jax.default_matmul_precision("highest"):  # ImageDream's own weighting: out + out_ip
        eps = apply({"params": params}, nhwc(case["x"]), case["timesteps"], case["context"], case["camera"], tokens,
                    FusionWeights(1.0, 1.0))
    assert compare(nchw(eps), case["eps"], COMPONENT_TOL)[0]
