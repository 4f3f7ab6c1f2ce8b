"""Parity beyond config A: every official case set under tests/reference_configs/<name>/{release,cases} (made by
tools/official_cases/make_cases.py with the official PyTorch code on releases of other sizes) must pass.

Each set differs from config A in every size the release and the call can vary (views, image/latent size, VAE levels,
heads by num_heads, retrieved images, resampler, CLIP, DINOv2 and processor sizes, fp16/bf16 weights on disk, prompt,
steps); see each set's cases/README.md.
"""

import pathlib

import pytest

from mvrag_jax.verify import CASES, run_cases

CONFIGS_DIR = pathlib.Path(__file__).parents[1] / "reference_configs"
CONFIG_NAMES = sorted(p.name for p in CONFIGS_DIR.iterdir() if (p / "release").is_dir() and (p / "cases").is_dir())
# Each set costs minutes of JAX compiles on CPU (UNet, DDIM scan, VAE, CLIP, DINOv2 at new shapes): the default suite
# runs one, the others run with `-m slow`.
DEFAULT_SUITE = {"b"}

# Cases that may be skipped (never failed): none, every case has a check.
MAY_SKIP: set[str] = set()


def test_there_are_other_configurations():
    assert CONFIG_NAMES and DEFAULT_SUITE <= set(CONFIG_NAMES), f"case sets under {CONFIGS_DIR}: {CONFIG_NAMES}"


@pytest.mark.parametrize("name", [pytest.param(n, marks=() if n in DEFAULT_SUITE else pytest.mark.slow)
                                  for n in CONFIG_NAMES])
def test_official_cases_of_another_configuration_pass(name):
    root = CONFIGS_DIR / name
    results = {r.case: r for r in run_cases(root / "release", root / "cases")}
    assert set(results) == set(CASES), f"{name}: case files {sorted(results)} != known cases {sorted(CASES)}"
    failed = {case: {k: v for k, v in r.details.items() if not v.get("pass", True)}
              for case, r in results.items() if r.status == "fail"}
    assert not failed, f"{name}: failing arrays {failed}"
    skipped = {case for case, r in results.items() if r.status == "skipped"}
    assert skipped <= MAY_SKIP, f"{name}: unexpectedly skipped {sorted(skipped - MAY_SKIP)}"
    for r in results.values():
        assert r.status in ("pass", "skipped")
