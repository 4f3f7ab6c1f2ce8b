"""Reconstruction quality against ground-truth views (IND-Eval, the paper's Table 3): PSNR, SSIM and LPIPS of each
generated view against the ground-truth view at the same camera, averaged over an object's views.

* PSNR: 10 log10(255^2 / MSE) over all pixels and channels of one uint8 view pair.
* SSIM: Wang et al. 2004 with their constants (11 x 11 Gaussian window, sigma 1.5, K1 0.01, K2 0.03, range 255),
  on each RGB channel over the valid window positions, channels averaged (= skimage's structural_similarity with
  gaussian_weights=True, use_sample_covariance=False, channel_axis=-1, data_range=255).
* LPIPS: models/lpips.py, v0.1 VGG (the lpips package's default for evaluation papers report as "LPIPS").
  Weights, converted once with torch (two one-liners, `lpips_commands`), into a folder passed as `--lpips DIR`:
      DIR/vgg16.safetensors       torchvision's vgg16-397923af.pth (its classifier.* is ignored)
      DIR/lpips_vgg.safetensors   the lpips package's lpips/weights/v0.1/vgg.pth

Ground-truth views of another size are resized to the generated view's size first (PIL bicubic), so a 512 px render
scores against 256 px views; generated and ground-truth backgrounds should match (the paper's IND-Eval renders use
the generator's grey: see eval/ind_eval.py).
"""

import pathlib
from typing import Any, Callable, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from PIL import Image

from mvrag_jax.convert.keys import state_dict_to_params
from mvrag_jax.inputs.release import read_safetensors
from mvrag_jax.models import lpips
from mvrag_jax.errors import PathNotFoundError, UsageError

SSIM_WINDOW, SSIM_SIGMA, K1, K2, RANGE = 11, 1.5, 0.01, 0.03, 255.0
VGG_FILE, LIN_FILE = "vgg16.safetensors", "lpips_vgg.safetensors"


def match_size(reference: np.ndarray, hw: tuple[int, int]) -> np.ndarray:
    reference = np.asarray(reference, np.uint8)[..., :3]
    if reference.shape[:2] == tuple(hw):
        return reference
    return np.asarray(Image.fromarray(reference).resize((hw[1], hw[0]), Image.Resampling.BICUBIC))


def psnr(view: np.ndarray, reference: np.ndarray) -> float:
    mse = np.mean((np.asarray(view, np.float64) - np.asarray(reference, np.float64)) ** 2)
    return float("inf") if mse == 0 else float(10.0 * np.log10(RANGE ** 2 / mse))


def _gaussian() -> np.ndarray:
    x = np.arange(SSIM_WINDOW) - SSIM_WINDOW // 2
    g = np.exp(-(x ** 2) / (2 * SSIM_SIGMA ** 2))
    return g / g.sum()


def _filter(x: np.ndarray) -> np.ndarray:
    """Separable Gaussian filter over the valid positions of [H, W] (the window fully inside the image)."""
    g = _gaussian()
    rows = np.apply_along_axis(lambda r: np.convolve(r, g, mode="valid"), 1, x)
    return np.apply_along_axis(lambda c: np.convolve(c, g, mode="valid"), 0, rows)


def ssim(view: np.ndarray, reference: np.ndarray) -> float:
    a, b = np.asarray(view, np.float64), np.asarray(reference, np.float64)
    if min(a.shape[:2]) < SSIM_WINDOW:
        raise UsageError(f"SSIM needs views of at least {SSIM_WINDOW} px, got {a.shape[:2]}")
    c1, c2 = (K1 * RANGE) ** 2, (K2 * RANGE) ** 2
    scores = []
    for c in range(a.shape[-1]):
        x, y = a[..., c], b[..., c]
        mx, my = _filter(x), _filter(y)
        vx, vy, cxy = _filter(x * x) - mx * mx, _filter(y * y) - my * my, _filter(x * y) - mx * my
        s = ((2 * mx * my + c1) * (2 * cxy + c2)) / ((mx * mx + my * my + c1) * (vx + vy + c2))
        scores.append(s.mean())
    return float(np.mean(scores))


# ---- LPIPS weights ---------------------------------------------------------------------------------------------------
def lpips_commands(folder: str = "lpips") -> list[str]:
    line = ("python -c \"import torch, safetensors.torch as s; s.save_file({{k: v.contiguous() for k, v in "
            "torch.load('{src}', map_location='cpu').items() if not k.startswith('classifier.')}}, '{dst}')\"")
    return [line.format(src="vgg16-397923af.pth", dst=f"{folder}/{VGG_FILE}"),
            line.format(src="lpips/weights/v0.1/vgg.pth", dst=f"{folder}/{LIN_FILE}")]


def load_lpips(folder: str | pathlib.Path) -> tuple[lpips.LPIPSConfig, Any]:
    folder = pathlib.Path(folder).expanduser().absolute()
    files = [folder / VGG_FILE, folder / LIN_FILE]
    absent = [f.name for f in files if not f.is_file()]
    if absent:
        raise PathNotFoundError(f"--lpips {folder} lacks {absent}; convert the published weights once with torch: "
                                + " && ".join(lpips_commands(str(folder))))
    state_dict = {k: v for k, v in read_safetensors(files[0]).items() if k.startswith("features.")}
    state_dict.update(read_safetensors(files[1]))
    first = state_dict.get("features.0.weight")
    if first is None or first.shape[0] == 0 or 64 % first.shape[0]:
        raise UsageError(f"{files[0]} has no features.0.weight of a VGG16 (torchvision layout); is it "
                         "vgg16-397923af.pth converted?")
    config = lpips.LPIPSConfig(width_divisor=64 // int(first.shape[0]))
    shapes = nn.unbox(jax.eval_shape(lpips.init_params, config, jax.random.key(0)))
    params = state_dict_to_params(state_dict, shapes, component=f"{folder.name} LPIPS",
                                  hint="expected torchvision vgg16 features.* and lpips v0.1 lin<k>.model.1.weight "
                                       "(net='vgg'; the alex and squeeze variants have other shapes)")
    return config, params


def lpips_metric(config: lpips.LPIPSConfig, params: Any, batch: int = 8
                 ) -> Callable[[Sequence[np.ndarray], Sequence[np.ndarray]], np.ndarray]:
    """(views, references) uint8 of one size -> LPIPS [n]; the inputs go to [-1, 1] as lpips(normalize=True)."""
    params = jax.device_put(params)
    forward = jax.jit(lambda p, a, b: lpips.distance(config, p, a, b))

    def score(views: Sequence[np.ndarray], references: Sequence[np.ndarray]) -> np.ndarray:
        a = np.stack(views).astype(np.float32) / 127.5 - 1.0
        b = np.stack(references).astype(np.float32) / 127.5 - 1.0
        out = []
        for start in range(0, len(a), batch):
            x, y = a[start:start + batch], b[start:start + batch]
            pad = ((0, batch - len(x)),) + ((0, 0),) * 3
            out.append(np.asarray(forward(params, jnp.asarray(np.pad(x, pad)), jnp.asarray(np.pad(y, pad))))[:len(x)])
        return np.concatenate(out)
    return score
