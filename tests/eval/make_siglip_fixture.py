"""Write tests/eval/fixtures/siglip_tiny: a tiny random transformers SiglipModel (save_pretrained: config.json +
model.safetensors), a SigLIP-style preprocessor_config.json, the tiny release's tokenizer (a stand-in: the real
SigLIP tokenizer is sentencepiece; the port under test is the network), and cases.npz with transformers' own
get_text_features / get_image_features on fixed ids and pixels.

    /work/wt/eval-venv/bin/python -m tests.eval.make_siglip_fixture    # needs torch + transformers
"""

import json
import pathlib
import shutil

import numpy as np
import torch
from transformers import SiglipConfig, SiglipModel

FIXTURE = pathlib.Path(__file__).parent / "fixtures" / "siglip_tiny"
TOKENIZER = pathlib.Path(__file__).parents[1] / "reference" / "tiny_release" / "tokenizer"
TEXT = dict(vocab_size=574, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
            max_position_embeddings=16, projection_size=32)
VISION = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4, image_size=24,
              patch_size=8)


def build(seed: int = 0, text: dict = TEXT, vision: dict = VISION) -> SiglipModel:
    torch.manual_seed(seed)
    model = SiglipModel(SiglipConfig(text_config=text, vision_config=vision)).eval()
    with torch.no_grad():  # move every parameter off its init so a mapping mistake shows
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return model


def cases(model: SiglipModel, seed: int = 0) -> dict[str, np.ndarray]:
    cfg = model.config
    rng = np.random.default_rng(seed)
    ids = rng.integers(0, cfg.text_config.vocab_size, (3, cfg.text_config.max_position_embeddings))
    size = cfg.vision_config.image_size
    pixels = rng.standard_normal((2, size, size, 3)).astype(np.float32)  # NHWC
    with torch.no_grad():
        text = model.get_text_features(input_ids=torch.from_numpy(ids)).pooler_output
        image = model.get_image_features(pixel_values=torch.from_numpy(pixels).permute(0, 3, 1, 2)).pooler_output
    return {"input_ids": ids.astype(np.int32), "pixels": pixels, "text_embeds": text.numpy(),
            "image_embeds": image.numpy()}


def main() -> None:
    model = build()
    if FIXTURE.exists():
        shutil.rmtree(FIXTURE)
    model.save_pretrained(FIXTURE, safe_serialization=True)
    size = VISION["image_size"]
    (FIXTURE / "preprocessor_config.json").write_text(json.dumps({
        "image_processor_type": "SiglipImageProcessor", "do_resize": True, "size": {"height": size, "width": size},
        "resample": 2, "do_rescale": True, "rescale_factor": 1 / 255, "do_normalize": True,
        "image_mean": [0.5, 0.5, 0.5], "image_std": [0.5, 0.5, 0.5]}, indent=1))
    for path in TOKENIZER.iterdir():
        shutil.copy(path, FIXTURE / path.name)
    np.savez(FIXTURE / "cases.npz", **cases(model))
    print(f"wrote {FIXTURE}")


if __name__ == "__main__":
    main()
