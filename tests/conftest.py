"""Shared fixtures: the bundled reference data and one converted tiny checkpoint per test session."""

import pathlib

import pytest

REFERENCE = pathlib.Path(__file__).parent / "reference"
TINY_RELEASE = REFERENCE / "tiny_release"
CASES = REFERENCE / "cases"
MANIFESTS = REFERENCE / "manifests"
# Tiny official MVDream / ImageDream single files and their cases (tools/official_cases/init_sources.py).
MVDREAM_DIR = pathlib.Path(__file__).parent / "reference_configs" / "mvdream"
IMAGEDREAM_DIR = pathlib.Path(__file__).parent / "reference_configs" / "imagedream"
MVDREAM_FILE, MVDREAM_YAML = MVDREAM_DIR / "sd-v2.1-base-4view-tiny.safetensors", MVDREAM_DIR / "mvdream.yaml"
IMAGEDREAM_FILE = IMAGEDREAM_DIR / "sd-v2.1-base-4view-ipmv-tiny.safetensors"
IMAGEDREAM_YAML = IMAGEDREAM_DIR / "imagedream.yaml"


@pytest.fixture(scope="session")
def tiny_ckpt(tmp_path_factory) -> pathlib.Path:
    """The tiny release converted with `convert_release` (read-only for tests: copy before mutating)."""
    from mvrag_jax.convert import convert_release
    return convert_release(TINY_RELEASE, tmp_path_factory.mktemp("ckpt") / "tiny", show_progress=False)


@pytest.fixture(scope="session")
def ldm_sources():
    """{"mvdream": ..., "imagedream": ...}: the tiny official single files, each converted once per session."""
    from mvrag_jax.convert.ldm_sources import load_source
    return {"mvdream": load_source(MVDREAM_FILE, "mvdream", MVDREAM_YAML),
            "imagedream": load_source(IMAGEDREAM_FILE, "imagedream", IMAGEDREAM_YAML)}


@pytest.fixture(scope="session")
def init_ckpt(tmp_path_factory) -> pathlib.Path:
    """The training init of the tiny MVDream + ImageDream (+ the tiny release's encoders) (read-only for tests)."""
    from mvrag_jax.convert import convert_init
    return convert_init(MVDREAM_FILE, tmp_path_factory.mktemp("init") / "ckpt", imagedream=IMAGEDREAM_FILE,
                        release=TINY_RELEASE, mvdream_config=MVDREAM_YAML, imagedream_config=IMAGEDREAM_YAML)


def free_port() -> int:
    """A TCP port on 127.0.0.1 that is free now (for a multi-process test's coordinator)."""
    import socket
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def load_case(name: str) -> dict:
    """The arrays of reference case `name` (tests/reference/cases/<name>.npz)."""
    import numpy as np
    with np.load(CASES / f"{name}.npz") as data:
        return {key: data[key] for key in data.files}


@pytest.fixture(scope="session")
def release_models():
    """The tiny release's models, each converted once per session (as `mvrag verify-reference` converts them)."""
    from mvrag_jax.verify.models import ReleaseModels
    return ReleaseModels.open(TINY_RELEASE)


def write_text_only_release(dst: pathlib.Path) -> pathlib.Path:
    """An MVDream-style base release at `dst`: the tiny release without the retrieval branch (no to_k_ip/to_v_ip in
    the UNet, no resampler/, image_encoder/ or facebook/dinov2-base/ folders)."""
    import shutil

    from mvrag_jax.inputs.release import read_safetensors, write_safetensors

    dropped = ("resampler", "image_encoder", "facebook")
    shutil.copytree(TINY_RELEASE, dst, ignore=lambda folder, names: [n for n in names if folder == str(TINY_RELEASE)
                                                                     and n in dropped])
    weights = dst / "unet" / "diffusion_pytorch_model.safetensors"
    tensors = {k: v for k, v in read_safetensors(weights).items() if ".to_k_ip." not in k and ".to_v_ip." not in k}
    write_safetensors(weights, tensors)
    return dst
