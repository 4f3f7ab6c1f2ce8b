"""Shared fixtures: the bundled reference data and one converted tiny checkpoint per test session."""

import pathlib

import pytest

REFERENCE = pathlib.Path(__file__).parent / "reference"
TINY_RELEASE = REFERENCE / "tiny_release"
CASES = REFERENCE / "cases"
MANIFESTS = REFERENCE / "manifests"


@pytest.fixture(scope="session")
def tiny_ckpt(tmp_path_factory) -> pathlib.Path:
    """The tiny release converted with `convert_release` (read-only for tests: copy before mutating)."""
    from mvrag_jax.convert import convert_release
    return convert_release(TINY_RELEASE, tmp_path_factory.mktemp("ckpt") / "tiny", show_progress=False)
