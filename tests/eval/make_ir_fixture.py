"""Write tests/eval/fixtures/ir_tiny: a tiny random GUIE instance-retrieval model in the released on-disk layout
(the DistributedDataParallel state dict of add_layer_model, `module.` prefix and fc2 included, as safetensors) and
cases.npz, the PyTorch outputs (projection and 64-d-style fc1 embedding) of guie_torch.py on random pixels.

    /work/wt/eval-venv/bin/python -m tests.eval.make_ir_fixture      # any Python with torch + safetensors + numpy

Tiny sizes: 18 px input, kernel 6 with the overlap variant's stride kernel - 2 = 4 (a 4 x 4 grid, 17 positions),
width 32, 2 layers, 2 heads, projection 16, fc1 8, 5 training classes.
"""

import json
import pathlib

import numpy as np
import torch
from safetensors.torch import save_file

from tests.eval.guie_torch import AddLayerModel, OverlapVisualTransformer

FIXTURE = pathlib.Path(__file__).parent / "fixtures" / "ir_tiny"
SIZES = dict(image_size=18, patch=6, width=32, layers=2, heads=2, output_dim=16)
EMBEDDING_DIM, CLASSES = 8, 5


def build(seed: int = 0) -> AddLayerModel:
    torch.manual_seed(seed)
    model = AddLayerModel(OverlapVisualTransformer(**SIZES), SIZES["output_dim"], EMBEDDING_DIM, CLASSES)
    with torch.no_grad():  # move norms and biases off their 1 / 0 init so a mapping mistake shows
        for name, p in model.named_parameters():
            if name.endswith("bias") or ".ln" in name or name.startswith("backbone.ln"):
                p.add_(0.1 * torch.randn_like(p))
    return model.eval()


def main() -> None:
    model = build()
    FIXTURE.mkdir(parents=True, exist_ok=True)
    save_file({f"module.{k}": v.contiguous() for k, v in model.state_dict().items()}, FIXTURE / "model.safetensors")
    (FIXTURE / "config.json").write_text(json.dumps({"num_attention_heads": SIZES["heads"],
                                                     "patch_stride": SIZES["patch"] - 2}, indent=1) + "\n")
    rng = np.random.default_rng(0)
    pixels = rng.standard_normal((3, SIZES["image_size"], SIZES["image_size"], 3)).astype(np.float32)  # NHWC
    with torch.no_grad():
        projection, embedding = model(torch.from_numpy(pixels).permute(0, 3, 1, 2))
    np.savez(FIXTURE / "cases.npz", pixels=pixels, projection=projection.numpy(), embedding=embedding.numpy())
    print(f"wrote {FIXTURE}")


if __name__ == "__main__":
    main()
