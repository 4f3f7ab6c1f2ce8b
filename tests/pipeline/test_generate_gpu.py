"""`mvrag generate` on a GPU, when the machine running the tests has one (skipped otherwise, with the reason).

Install the GPU backend with `pip install -r requirements.txt -r requirements-gpu.txt`."""

import json

import jax
import numpy as np
import pytest
from PIL import Image

from mvrag_jax.cli import main
from tests.conftest import TINY_RELEASE

pytestmark = pytest.mark.skipif(jax.default_backend() != "gpu",
                                reason=f"no GPU backend (jax.default_backend() is {jax.default_backend()!r}); "
                                       "install requirements-gpu.txt on a GPU host to run it")


@pytest.mark.parametrize("dtype", ["fp32", "bf16"])
def test_generate_on_gpu(tmp_path, capsys, dtype):
    images = tmp_path / "retrieved"
    images.mkdir()
    Image.new("RGB", (40, 30), "red").save(images / "a.png")
    out = tmp_path / "out"
    assert main(["mvrag", "generate", "--release", str(TINY_RELEASE), "--prompt", "a red car", "--retrieved",
                 str(images), "--steps", "2", "--prior-steps", "1", "--dtype", dtype, "--out", str(out),
                 "--compile-cache-dir", "none"]) == 0
    summary = json.loads(capsys.readouterr().out.splitlines()[-1])
    assert summary["generated"] == 1
    [folder] = list(out.iterdir())
    views = [np.asarray(Image.open(folder / f"view_{i}.png")) for i in range(4)]
    assert all(v.dtype == np.uint8 and v.ndim == 3 for v in views)
