"""The harness itself: skipped is never pass, a perturbed reference fails, tolerances are the documented ones."""

import shutil

import numpy as np

from mvrag_jax.verify import CASES, COMPONENT_TOL, SAMPLING_TOL, Tolerance, compare, run_case, run_cases
from tests.conftest import CASES as CASES_DIR
from tests.conftest import TINY_RELEASE


def test_every_reference_case_has_a_check_with_the_documented_tolerance():
    present = {p.stem for p in CASES_DIR.glob("*.npz")}
    assert present <= set(CASES)
    for name, (_, tol) in CASES.items():
        expected = SAMPLING_TOL if name in ("ddim_sample", "pipeline_e2e") else COMPONENT_TOL
        assert tol == expected, name
    assert COMPONENT_TOL == Tolerance(1e-4, 1e-4) and SAMPLING_TOL == Tolerance(1e-3, 1e-3)


def test_compare_is_elementwise_abs_plus_rel():
    ref = np.array([0.0, 100.0], np.float32)
    assert compare(ref + np.array([9e-5, 9e-3], np.float32), ref, COMPONENT_TOL)[0]
    assert not compare(ref + np.array([2e-4, 0.0], np.float32), ref, COMPONENT_TOL)[0]
    assert not compare(ref[:1], ref, COMPONENT_TOL)[0]  # shape mismatch never passes


def test_perturbed_reference_fails(tmp_path):
    cases = tmp_path / "cases"
    cases.mkdir()
    data = dict(np.load(CASES_DIR / "camera.npz"))
    data["camera_0"] = data["camera_0"] + np.float32(1e-3)
    np.savez(cases / "camera.npz", **data)
    shutil.copy(CASES_DIR / "README.md", cases / "README.md")
    (result,) = run_cases(TINY_RELEASE, cases)
    assert result.status == "fail"
    assert result.details["camera_0"]["pass"] is False and result.details["camera_1"]["pass"] is True


def test_every_reference_case_passes_and_none_is_skipped(release_models):
    # the session's models (and compiled pipeline stages), as run_cases would build them
    names = sorted(p.stem for p in CASES_DIR.glob("*.npz"))
    results = {name: run_case(name, release_models, CASES_DIR) for name in names}
    assert {name: r.status for name, r in results.items() if r.status != "pass"} == {}
    # the end-to-end case checks every stage, the teacher-forced main pass and both uint8 conversions
    assert {"prior_final_latents", "fusion_scale", "main_final_latents_teacher_forced", "images",
            "images_uint8_round_violations"} <= set(results["pipeline_e2e"].details)


def test_skipped_is_reported_with_a_reason_and_no_error(tmp_path):
    cases = tmp_path / "cases"
    cases.mkdir()
    (cases / "mystery.npz").write_bytes((CASES_DIR / "camera.npz").read_bytes())  # a case file with no check
    (result,) = run_cases(TINY_RELEASE, cases)
    assert result.status == "skipped" and result.max_abs_err is None and "reason" in result.details
