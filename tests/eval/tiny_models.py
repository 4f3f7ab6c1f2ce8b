"""Tiny random metric encoders for the eval tests: an FID Inception in pytorch-fid's key layout (width / 16) and a
tiny dataset folder in the ood_eval manual layout.

    python -m tests.eval.tiny_models OUT_DIR    # writes OUT_DIR/tiny_inception.safetensors
"""

import pathlib
import sys

import jax
import numpy as np
from PIL import Image

from mvrag_jax.convert.keys import flatten, flax_to_torch_array
from mvrag_jax.models import inception
from mvrag_jax.inputs.release import write_safetensors

WIDTH_DIVISOR = 16


def inception_state_dict(width_divisor: int = WIDTH_DIVISOR, seed: int = 0) -> dict[str, np.ndarray]:
    """A random state dict with the FID Inception's keys (+ BatchNorm num_batches_tracked counters, as torch saves)."""
    config = inception.InceptionConfig(width_divisor=width_divisor)
    shapes = jax.eval_shape(inception.init_params, config, jax.random.key(0))
    # pytorch-fid's names keep `_<digit>` inside segments (branch7x7_2), so join the Flax path with dots as it is
    # (params_to_state_dict would read `_2` as a torch list index).
    torch_leaf = {"kernel": "weight", "scale": "weight"}
    zeros = {".".join(path[:-1] + (torch_leaf.get(path[-1], path[-1]),)):
             flax_to_torch_array(path[-1], np.zeros(s.shape, np.float32)) for path, s in flatten(shapes).items()}
    rng = np.random.default_rng(seed)
    tensors = {}
    for key, value in sorted(zeros.items()):
        if key.endswith("running_var"):
            tensors[key] = rng.uniform(0.5, 1.5, value.shape).astype(np.float32)
        elif key.endswith("bn.weight"):
            tensors[key] = rng.uniform(0.8, 1.2, value.shape).astype(np.float32)
        elif key.endswith("conv.weight") or key == "fc.weight":
            fan_in = int(np.prod(value.shape[1:]))
            tensors[key] = (rng.standard_normal(value.shape) * np.sqrt(2.0 / fan_in)).astype(np.float32)
        else:
            tensors[key] = (0.1 * rng.standard_normal(value.shape)).astype(np.float32)
        if key.endswith("bn.running_mean"):
            tensors[key.replace("running_mean", "num_batches_tracked")] = np.asarray(0, np.int64)
    return tensors


def write_tiny_inception(out_dir: str | pathlib.Path) -> pathlib.Path:
    path = pathlib.Path(out_dir) / "tiny_inception.safetensors"
    path.parent.mkdir(parents=True, exist_ok=True)
    write_safetensors(path, inception_state_dict())
    return path


COLOURS = [(220, 30, 30), (30, 30, 220), (30, 200, 30), (230, 220, 40), (200, 40, 200)]


def blob_image(colour: tuple[int, int, int], size: int, seed: int) -> np.ndarray:
    """A grey image with a coloured disc at a seed-dependent offset, plus a little noise."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size]
    cy, cx = size / 2 + rng.uniform(-size / 8, size / 8, 2)
    image = np.full((size, size, 3), 127, np.float32)
    image[(yy - cy) ** 2 + (xx - cx) ** 2 < (size / 3) ** 2] = colour
    return np.clip(image + rng.normal(0, 6, image.shape), 0, 255).astype(np.uint8)


def write_dataset(root: str | pathlib.Path, prompts: int = 3, size: int = 32, with_reference: bool = True
                  ) -> pathlib.Path:
    """<root>/p<i>/prompt.txt, retrieved/ (2 images), reference/ (2 images, or none: then eval splits retrieved/
    which then has 4)."""
    root = pathlib.Path(root)
    for i in range(prompts):
        folder = root / f"p{i}"
        (folder / "retrieved").mkdir(parents=True, exist_ok=True)
        (folder / "prompt.txt").write_text(f"a {['red', 'blue', 'green', 'yellow', 'purple'][i % 5]} ball\n")
        count = 2 if with_reference else 4
        for j in range(count):
            Image.fromarray(blob_image(COLOURS[i % 5], size, 100 * i + j)).save(folder / "retrieved" / f"r{j}.png")
        if with_reference:
            (folder / "reference").mkdir(exist_ok=True)
            for j in range(2):
                Image.fromarray(blob_image(COLOURS[i % 5], size, 100 * i + 50 + j)).save(
                    folder / "reference" / f"ref{j}.png")
    return root


def write_views(root: str | pathlib.Path, dataset: pathlib.Path, views: int = 4, size: int = 32,
                mismatch: int | None = None) -> pathlib.Path:
    """Another method's output: <root>/<prompt_id>/view_<v>.png per dataset prompt (prompt `mismatch` gets the
    colour of the next prompt, so it scores worst)."""
    root = pathlib.Path(root)
    ids = sorted(p.name for p in pathlib.Path(dataset).iterdir() if p.is_dir())
    for i, prompt_id in enumerate(ids):
        (root / prompt_id).mkdir(parents=True, exist_ok=True)
        colour = COLOURS[(i + (1 if i == mismatch else 0)) % 5]
        for v in range(views):
            Image.fromarray(blob_image(colour, size, 1000 + 10 * i + v)).save(root / prompt_id / f"view_{v}.png")
    return root


if __name__ == "__main__":
    print(write_tiny_inception(sys.argv[1]))
