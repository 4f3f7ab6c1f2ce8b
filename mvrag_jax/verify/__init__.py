"""Parity harness: run our implementation on the official reference cases and compare with the stored outputs.

Used by `mvrag verify-reference` and by the parity tests. Each case file `<name>.npz` in the cases folder has a
check function (in the sibling modules) that returns named (ours, reference) pairs; a case passes when every pair is
within tolerance. A check whose component is not implemented raises `NotImplementedYet` and is reported `skipped`.
"""

import dataclasses
import pathlib
from typing import Callable, Iterator

import jax
import numpy as np

from mvrag_jax.verify import camera, clip, dinov2, ldm_sources, pipeline, resampler, sampling, unet, vae
from mvrag_jax.verify.models import NotImplementedYet, ReleaseModels
from mvrag_jax.errors import PathNotFoundError, UsageError


@dataclasses.dataclass(frozen=True)
class Tolerance:
    """Elementwise |ours - ref| <= atol + rtol * |ref|, in float32."""
    atol: float
    rtol: float


COMPONENT_TOL = Tolerance(1e-4, 1e-4)
SAMPLING_TOL = Tolerance(1e-3, 1e-3)

Check = Callable[[ReleaseModels, dict[str, np.ndarray]], dict[str, tuple[np.ndarray, np.ndarray]]]


# case name -> (check, tolerance). Every case file of the reference set has an entry.
CASES: dict[str, tuple[Check, Tolerance]] = {
    "camera": (camera.check_camera, COMPONENT_TOL),
    "unet_forward_text": (unet.check_forward, COMPONENT_TOL),
    "unet_forward_ip": (unet.check_forward, COMPONENT_TOL),
    "resampler": (resampler.check_resampler, COMPONENT_TOL),
    "clip_text": (clip.check_clip_text, COMPONENT_TOL),
    "clip_vision": (clip.check_clip_vision, COMPONENT_TOL),
    "vae": (vae.check_vae, COMPONENT_TOL),
    "dinov2": (dinov2.check_dinov2, COMPONENT_TOL),
    "ddim_sample": (sampling.check_ddim_sample, SAMPLING_TOL),
    "pipeline_e2e": (pipeline.check_pipeline, SAMPLING_TOL),
}
# Cases of the official MVDream / ImageDream single files (tests/reference_configs/mvdream, imagedream), checked on
# `ldm_sources.SourceModels` (`mvrag verify-reference --mvdream FILE`), not on a release.
SINGLE_FILE_CASES: dict[str, tuple[Check, Tolerance]] = {
    "mvdream_unet_forward": (ldm_sources.check_mvdream_forward, COMPONENT_TOL),
    "mvdream_vae": (ldm_sources.check_mvdream_vae, COMPONENT_TOL),
    "mvdream_clip_text": (ldm_sources.check_mvdream_clip_text, COMPONENT_TOL),
    "imagedream_unet_forward_ip": (ldm_sources.check_imagedream_forward, COMPONENT_TOL),
}
ALL_CASES = {**CASES, **SINGLE_FILE_CASES}


@dataclasses.dataclass
class CaseResult:
    case: str
    status: str                     # pass | fail | skipped
    max_abs_err: float | None
    tol: dict
    details: dict                   # per array: max_abs_err and whether it passed; or the skip/error reason

    def to_json(self) -> dict:
        return dataclasses.asdict(self)


def compare(ours: np.ndarray, ref: np.ndarray, tol: Tolerance) -> tuple[bool, float]:
    """(within tolerance, max |ours - ref|); shapes must match exactly."""
    ours, ref = np.asarray(ours, np.float32), np.asarray(ref, np.float32)
    if ours.shape != ref.shape:
        return False, float("inf")
    err = np.abs(ours - ref)
    return bool(np.all(err <= tol.atol + tol.rtol * np.abs(ref))), float(err.max(initial=0.0))


def run_case(name: str, models: ReleaseModels, cases_dir: pathlib.Path) -> CaseResult:
    check, tol = ALL_CASES[name]
    with np.load(cases_dir / f"{name}.npz") as data:
        case = {k: data[k] for k in data.files}
    try:
        with jax.default_matmul_precision("highest"):  # parity needs full fp32 matmuls on any backend
            pairs = check(models, case)
    except NotImplementedYet as e:
        return CaseResult(name, "skipped", None, dataclasses.asdict(tol), {"reason": str(e)})
    details, worst, ok = {}, 0.0, True
    for array, (ours, ref) in pairs.items():
        passed, err = compare(ours, ref, tol)
        details[array] = {"max_abs_err": err, "pass": passed}
        worst, ok = max(worst, err), ok and passed
    return CaseResult(name, "pass" if ok else "fail", worst, dataclasses.asdict(tol), details)


def run_cases(release_dir: str | pathlib.Path | None, cases_dir: str | pathlib.Path,
              only: list[str] | None = None, models=None) -> Iterator[CaseResult]:
    """Yield a result per case present in `cases_dir` (optionally only those named in `only`), on the release at
    `release_dir` or on `models` (anything with `get(name) -> (config, params)`, e.g. ldm_sources.SourceModels)."""
    cases_dir = pathlib.Path(cases_dir)
    if not cases_dir.is_dir():
        raise PathNotFoundError(f"cases directory {cases_dir} does not exist; pass the folder with the *.npz cases")
    present = sorted(p.stem for p in cases_dir.glob("*.npz"))
    unknown = sorted(set(only or ()) - set(ALL_CASES))
    if unknown:
        raise UsageError(f"unknown case(s) {unknown}; known cases: {', '.join(sorted(ALL_CASES))}")
    selected = [name for name in present if not only or name in only]
    if not present:
        raise UsageError(f"cases directory {cases_dir} holds no *.npz cases; pass the folder with the reference "
                         "cases (e.g. tests/reference/cases)")
    if not selected:
        raise UsageError(f"none of --only {sorted(only or ())} is present in {cases_dir} (present: "
                         f"{', '.join(present)})")
    models = ReleaseModels.open(release_dir) if models is None else models
    for name in selected:
        if name not in ALL_CASES:
            yield CaseResult(name, "skipped", None, {}, {"reason": "no check for this case file"})
            continue
        yield run_case(name, models, cases_dir)
