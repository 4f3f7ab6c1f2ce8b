"""Write tests/eval/fixtures/lpips_tiny: a tiny random LPIPS (VGG widths / 16) in the two released layouts
(torchvision vgg16 `features.*` + a `classifier.*` tensor it must ignore, as vgg16.safetensors; lpips' lin layers as
lpips_vgg.safetensors) and cases.npz with the PyTorch distances of lpips_torch.py on random image pairs.

    /work/wt/eval-venv/bin/python -m tests.eval.make_lpips_fixture     # any Python with torch + safetensors
"""

import pathlib

import numpy as np
import torch
from safetensors.torch import save_file

from tests.eval.lpips_torch import LPIPS

FIXTURE = pathlib.Path(__file__).parent / "fixtures" / "lpips_tiny"
DIVISOR = 16


def build(seed: int = 0) -> LPIPS:
    torch.manual_seed(seed)
    model = LPIPS(DIVISOR).eval()
    with torch.no_grad():  # lpips' lin weights are non-negative
        for k in range(5):
            getattr(model, f"lin{k}").model[1].weight.uniform_(0.0, 1.0)
    return model


def main() -> None:
    model = build()
    FIXTURE.mkdir(parents=True, exist_ok=True)
    sd = model.state_dict()
    features = {k: v.contiguous() for k, v in sd.items() if k.startswith("features.")}
    features["classifier.0.weight"] = torch.zeros(2, 3)
    save_file(features, FIXTURE / "vgg16.safetensors")
    save_file({k: v.contiguous() for k, v in sd.items() if k.startswith("lin")}, FIXTURE / "lpips_vgg.safetensors")
    rng = np.random.default_rng(0)
    a = rng.uniform(-1, 1, (3, 32, 32, 3)).astype(np.float32)  # NHWC
    b = np.clip(a + rng.normal(0, 0.3, a.shape), -1, 1).astype(np.float32)
    b[2] = a[2]  # identical pair: distance 0
    with torch.no_grad():
        d = model(torch.from_numpy(a).permute(0, 3, 1, 2), torch.from_numpy(b).permute(0, 3, 1, 2))
    np.savez(FIXTURE / "cases.npz", a=a, b=b, distance=d.numpy())
    print(f"wrote {FIXTURE}: {d.numpy()}")


if __name__ == "__main__":
    main()
