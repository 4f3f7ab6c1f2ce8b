"""eval/reconstruction.py: PSNR, SSIM (against a direct 2D-window evaluation of Wang et al.'s formula) and the LPIPS
port against PyTorch (committed tiny cases from make_lpips_fixture.py; fresh weights when torch is installed)."""

import pathlib

import jax
import numpy as np
import pytest

from mvrag_jax.convert.keys import CheckpointKeyError
from mvrag_jax.eval import reconstruction as rec
from mvrag_jax.inputs.release import read_safetensors, write_safetensors
from mvrag_jax.models import lpips

FIXTURE = pathlib.Path(__file__).parent / "fixtures" / "lpips_tiny"


def test_psnr_values():
    a = np.full((8, 8, 3), 100, np.uint8)
    b = a.copy()
    b[0, 0, 0] = 110  # MSE = 100 / 192
    assert rec.psnr(a, b) == pytest.approx(10 * np.log10(255 ** 2 / (100 / 192)))
    assert rec.psnr(a, a) == float("inf")


def _ssim_direct(a, b):
    g = rec._gaussian()
    w = np.outer(g, g)
    c1, c2 = (0.01 * 255) ** 2, (0.03 * 255) ** 2
    out = []
    for c in range(3):
        x, y = a[..., c].astype(np.float64), b[..., c].astype(np.float64)
        vals = []
        for i in range(x.shape[0] - 10):
            for j in range(x.shape[1] - 10):
                px, py = x[i:i + 11, j:j + 11], y[i:i + 11, j:j + 11]
                mx, my = (w * px).sum(), (w * py).sum()
                vx, vy = (w * (px - mx) ** 2).sum(), (w * (py - my) ** 2).sum()
                cxy = (w * (px - mx) * (py - my)).sum()
                vals.append((2 * mx * my + c1) * (2 * cxy + c2) / ((mx ** 2 + my ** 2 + c1) * (vx + vy + c2)))
        out.append(np.mean(vals))
    return float(np.mean(out))


def test_ssim_matches_the_formula():
    rng = np.random.default_rng(0)
    a = rng.integers(0, 256, (16, 14, 3), np.uint8)
    b = np.clip(a + rng.normal(0, 30, a.shape), 0, 255).astype(np.uint8)
    assert rec.ssim(a, b) == pytest.approx(_ssim_direct(a, b), abs=1e-9)
    assert rec.ssim(a, a) == pytest.approx(1.0)
    assert rec.ssim(a, b) < 0.95 and rec.ssim(a, 255 - a) < 0
    with pytest.raises(ValueError, match="11 px"):
        rec.ssim(a[:8], b[:8])


def test_lpips_matches_pytorch_cases():
    config, params = rec.load_lpips(FIXTURE)
    assert config.width_divisor == 16
    cases = np.load(FIXTURE / "cases.npz")
    with jax.default_matmul_precision("float32"):
        d = np.asarray(lpips.distance(config, params, cases["a"], cases["b"]))
    np.testing.assert_allclose(d, cases["distance"], atol=1e-6, rtol=1e-5)
    assert d[2] == 0 and d[0] > 0.05


def test_lpips_metric_on_uint8_and_bad_folders(tmp_path):
    score = rec.lpips_metric(*rec.load_lpips(FIXTURE), batch=2)
    rng = np.random.default_rng(1)
    views = [rng.integers(0, 256, (32, 32, 3), np.uint8) for _ in range(3)]
    d = score(views, [views[0], views[0], views[2]])
    assert d[0] == pytest.approx(0, abs=1e-7) and d[2] == pytest.approx(0, abs=1e-7) and d[1] > 0
    with pytest.raises(FileNotFoundError, match="vgg16-397923af.pth"):
        rec.load_lpips(tmp_path)
    lin = read_safetensors(FIXTURE / rec.LIN_FILE)
    del lin["lin4.model.1.weight"]
    write_safetensors(tmp_path / rec.LIN_FILE, lin)
    write_safetensors(tmp_path / rec.VGG_FILE, read_safetensors(FIXTURE / rec.VGG_FILE))
    with pytest.raises(CheckpointKeyError, match="lin4.model.1.weight"):
        rec.load_lpips(tmp_path)


def test_lpips_fresh_weights_match_pytorch(tmp_path):
    torch = pytest.importorskip("torch")
    from safetensors.torch import save_file
    from tests.eval.lpips_torch import LPIPS
    torch.manual_seed(5)
    model = LPIPS(32).eval()
    sd = model.state_dict()
    save_file({k: v.contiguous() for k, v in sd.items() if k.startswith("features.")}, tmp_path / rec.VGG_FILE)
    save_file({k: v.contiguous() for k, v in sd.items() if k.startswith("lin")}, tmp_path / rec.LIN_FILE)
    config, params = rec.load_lpips(tmp_path)
    rng = np.random.default_rng(3)
    a, b = (rng.uniform(-1, 1, (2, 40, 36, 3)).astype(np.float32) for _ in range(2))
    with torch.no_grad():
        ref = model(torch.from_numpy(a).permute(0, 3, 1, 2), torch.from_numpy(b).permute(0, 3, 1, 2)).numpy()
    with jax.default_matmul_precision("float32"):
        np.testing.assert_allclose(lpips.distance(config, params, a, b), ref, atol=1e-6, rtol=1e-5)
