"""The harness itself: skipped is never pass, a perturbed reference fails, tolerances are the documented ones."""

import shutil

import numpy as np

from mvrag_jax.verify import CASES, COMPONENT_TOL, SAMPLING_TOL, Tolerance, compare, run_cases
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


def test_statuses_are_only_pass_fail_or_skipped_and_nothing_fails():
    results = list(run_cases(TINY_RELEASE, CASES_DIR))
    assert {r.status for r in results} <= {"pass", "skipped"}
    for r in results:
        if r.status == "skipped":
            assert r.max_abs_err is None and "reason" in r.details
