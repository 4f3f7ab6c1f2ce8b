"""Compute tests/retrieval/tiny_clip_features.npz with transformers (NOT part of the test suite; needs torch).

    python -m tests.retrieval.tiny_clip /tmp/tiny_clip                        # project venv: write the model
    /work/torchenv/bin/python tests/retrieval/make_clip_fixture.py /tmp/tiny_clip tests/retrieval/tiny_clip_features.npz

Runs transformers' CLIPModel.get_text_features / get_image_features end to end (CLIPTokenizer padded to 77,
CLIPImageProcessorPil) on the inputs of tiny_clip.fixture_inputs (repeated here so this script needs no jax).
"""

import hashlib
import pathlib
import sys

import numpy as np
import torch
from transformers import CLIPImageProcessorPil, CLIPModel, CLIPTokenizer


def fixture_inputs():  # keep equal to tests/retrieval/tiny_clip.py::fixture_inputs
    prompts = ["a red cube", "A Blue Sphere on a table", "an orange cylinder, 3d asset", ""]
    rng = np.random.default_rng(1)
    images = rng.integers(0, 256, size=(3, 40, 48, 3), dtype=np.uint8)
    images[1, :, :24] = (255, 0, 0)
    return prompts, images


def main(model_dir: str, out: str) -> None:
    model_dir = pathlib.Path(model_dir)
    model, info = CLIPModel.from_pretrained(model_dir, output_loading_info=True)
    problems = {k: v for k, v in info.items() if v and k != "error_msgs" or (k == "error_msgs" and v)}
    if problems:
        raise SystemExit(f"transformers could not load {model_dir} cleanly: {problems}")
    model.eval()
    prompts, images = fixture_inputs()
    tokenizer = CLIPTokenizer.from_pretrained(model_dir)
    input_ids = tokenizer(prompts, padding="max_length", max_length=77, truncation=True, return_tensors="pt").input_ids
    processor = CLIPImageProcessorPil.from_pretrained(model_dir)
    pixel_values = processor(images=list(images), return_tensors="pt").pixel_values  # [n, 3, s, s]
    with torch.no_grad():
        text = model.get_text_features(input_ids=input_ids).pooler_output
        image = model.get_image_features(pixel_values=pixel_values).pooler_output
    np.savez(out, prompts=np.array(prompts), images=images, input_ids=input_ids.numpy().astype(np.int32),
             pixel_values=pixel_values.numpy(), text_features=text.numpy(), image_features=image.numpy(),
             weights_sha256=hashlib.sha256((model_dir / "model.safetensors").read_bytes()).hexdigest())
    print(f"wrote {out}: text {tuple(text.shape)}, image {tuple(image.shape)}")


if __name__ == "__main__":
    main(*sys.argv[1:])
