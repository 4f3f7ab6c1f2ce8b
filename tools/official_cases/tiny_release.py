"""Write a tiny random-weight MV-RAG release of a given configuration in the official on-disk layout, built from the
OFFICIAL modules (mv_unet.MultiViewUNetModel, resampler.Resampler) and the diffusers/transformers classes the
release names in model_index.json, saved with their own `save_pretrained` where they have one.

Random init (the rule of tests/reference, measured on its tiny_release): every parameter, including the official
zero-initialised convs/projections, is overwritten with seeded noise:
- tensors with >= 2 dims ~ N(0, 1) / sqrt(fan_in); fan_in = in_channels * kh * kw for the UNet/VAE conv kernels,
  the last dimension otherwise (Linear in-features, embedding width, transformers patch-embedding kernels);
- 1-D norm weights and DINOv2 layer-scale `lambda1` ~ 1 + 0.1 N; other 1-D tensors (biases, CLIP class embedding)
  ~ 0.05 N; the DINOv2 final layernorm bias ~ 1.5 N, so cosine similarities are positive and the fusion weight is
  not clamped to 0.
Must run after official_env.prepare() (imports official modules).
"""

import json
import pathlib

import numpy as np

from case_configs import SCHEDULER

MODEL_INDEX = {
    "_class_name": "MVRAGPipeline", "_diffusers_version": "0.31.0",
    "feature_extractor": ["transformers", "CLIPImageProcessor"], "image_encoder": ["transformers", "CLIPVisionModel"],
    "requires_safety_checker": False, "resampler": ["modules.resampler", "Resampler"],
    "scheduler": ["diffusers", "DDIMScheduler"], "text_encoder": ["transformers", "CLIPTextModel"],
    "tokenizer": ["transformers", "CLIPTokenizer"], "unet": ["modules.mv_unet", "MultiViewUNetModel"],
    "vae": ["diffusers", "AutoencoderKL"],
}
CLIP_MEAN, CLIP_STD = [0.48145466, 0.4578275, 0.40821073], [0.26862954, 0.26130258, 0.27577711]
IMAGENET_MEAN, IMAGENET_STD = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]


def randomize(module, seed: int, conv_fan_in: bool, special: dict | None = None):
    """Overwrite every parameter of a torch module in place with the seeded noise of the module docstring.
    `special`: name -> std of zero-mean noise, overriding the rule (DINOv2 layernorm.bias)."""
    import torch
    rng = np.random.default_rng(seed)
    with torch.no_grad():
        for name, param in sorted(module.named_parameters()):
            shape = tuple(param.shape)
            noise = rng.standard_normal(shape)
            if special and name in special:
                value = special[name] * noise
            elif len(shape) >= 2:
                fan_in = int(np.prod(shape[1:])) if conv_fan_in and len(shape) == 4 else shape[-1]
                value = noise / np.sqrt(fan_in)
            elif name.endswith(".weight") or name.endswith("lambda1"):
                value = 1.0 + 0.1 * noise
            else:
                value = 0.05 * noise
            param.copy_(torch.from_numpy(np.asarray(value, np.float32)))  # 0-d too (open_clip logit_scale)


def _cast(module, dtype_name: str | None):
    import torch
    if dtype_name:
        module.to(getattr(torch, dtype_name))
    return module


def _write_json(path: pathlib.Path, value: dict):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(value, indent=2))


def _save_state_dict(module, path: pathlib.Path, dtype_name: str | None):
    from safetensors.torch import save_file
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().contiguous() for k, v in _cast(module, dtype_name).state_dict().items()}
    save_file(state, str(path), metadata={"format": "pt"})


def write_tokenizer(folder: pathlib.Path, source: pathlib.Path, num_merges: int) -> int:
    """The toy byte-level CLIP tokenizer of `source` (tests/reference/tiny_release/tokenizer) with its first
    `num_merges` BPE merges. Returns the vocabulary size."""
    vocab = json.loads((source / "vocab.json").read_text())
    merges = (source / "merges.txt").read_text().splitlines()[1:]
    if num_merges > len(merges):
        raise SystemExit(f"make_cases: error: num_merges {num_merges} > {len(merges)} merges in {source}")
    specials = ["<|startoftext|>", "<|endoftext|>"]
    tokens = [t for t, i in sorted(vocab.items(), key=lambda kv: kv[1]) if t not in specials]
    tokens = tokens[:512 + num_merges] + specials  # 256 bytes, 256 bytes + '</w>', merges, specials
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "vocab.json").write_text(json.dumps({t: i for i, t in enumerate(tokens)}, ensure_ascii=False))
    (folder / "merges.txt").write_text("\n".join(["#version: 0.2"] + merges[:num_merges]) + "\n")
    for name in ("tokenizer_config.json", "special_tokens_map.json"):
        (folder / name).write_text((source / name).read_text())
    return len(tokens)


def _processor_json(proc: dict, mean, std, extra: dict) -> dict:
    return {"crop_size": {"height": proc["crop"], "width": proc["crop"]}, "do_center_crop": True,
            "do_convert_rgb": True, "do_normalize": True, "do_rescale": True, "do_resize": True,
            "image_mean": mean, "image_std": std, "resample": 3, "rescale_factor": 1 / 255,
            "size": {"shortest_edge": proc["shortest_edge"]}, **extra}


def write_release(root: pathlib.Path, cfg: dict, tokenizer_source: pathlib.Path):
    """The whole release folder (layout of tests/reference/tiny_release)."""
    from diffusers import AutoencoderKL
    from modules.mv_unet import MultiViewUNetModel
    from modules.resampler import Resampler
    from transformers import (CLIPTextConfig, CLIPTextModel, CLIPVisionConfig, CLIPVisionModel, Dinov2Config,
                              Dinov2Model)
    seed, dtypes = cfg["seed"], cfg["weights_dtype"]
    _write_json(root / "model_index.json", MODEL_INDEX)
    _write_json(root / "scheduler" / "scheduler_config.json", SCHEDULER)

    unet = MultiViewUNetModel(**cfg["unet"])
    randomize(unet, seed + 1, conv_fan_in=True)
    _write_json(root / "unet" / "config.json",
                {"_class_name": "MultiViewUNetModel", "_diffusers_version": "0.31.0", **cfg["unet"]})
    _save_state_dict(unet, root / "unet" / "diffusion_pytorch_model.safetensors", dtypes.get("unet"))

    resampler = Resampler(**cfg["resampler"])
    randomize(resampler, seed + 2, conv_fan_in=True)
    _write_json(root / "resampler" / "config.json", {"_class_name": "Resampler", **cfg["resampler"]})
    _save_state_dict(resampler, root / "resampler" / "model.safetensors", dtypes.get("resampler"))

    levels = len(cfg["vae"]["block_out_channels"])
    vae = AutoencoderKL(in_channels=3, out_channels=3, down_block_types=["DownEncoderBlock2D"] * levels,
                        up_block_types=["UpDecoderBlock2D"] * levels, sample_size=cfg["image_size"], **cfg["vae"])
    randomize(vae, seed + 3, conv_fan_in=True)
    _cast(vae, dtypes.get("vae")).save_pretrained(root / "vae", safe_serialization=True)

    vocab_size = write_tokenizer(root / "tokenizer", tokenizer_source, cfg["num_merges"])
    text = CLIPTextModel(CLIPTextConfig(vocab_size=vocab_size, bos_token_id=vocab_size - 2,
                                        eos_token_id=vocab_size - 1, pad_token_id=0, **cfg["clip_text"]))
    randomize(text, seed + 4, conv_fan_in=False)
    _cast(text, dtypes.get("clip_text")).save_pretrained(root / "text_encoder", safe_serialization=True)

    vision = CLIPVisionModel(CLIPVisionConfig(**cfg["clip_vision"]))
    randomize(vision, seed + 5, conv_fan_in=False)
    _cast(vision, dtypes.get("clip_vision")).save_pretrained(root / "image_encoder", safe_serialization=True)
    _write_json(root / "feature_extractor" / "preprocessor_config.json",
                _processor_json(cfg["clip_vision_proc"], CLIP_MEAN, CLIP_STD,
                                {"feature_extractor_type": "CLIPFeatureExtractor",
                                 "image_processor_type": "CLIPImageProcessor"}))

    dino = Dinov2Model(Dinov2Config(**cfg["dinov2"]))
    randomize(dino, seed + 6, conv_fan_in=False, special={"layernorm.bias": 1.5})
    _cast(dino, dtypes.get("dinov2")).save_pretrained(root / "facebook" / "dinov2-base", safe_serialization=True)
    _write_json(root / "facebook" / "dinov2-base" / "preprocessor_config.json",
                _processor_json(cfg["dinov2_proc"], IMAGENET_MEAN, IMAGENET_STD,
                                {"image_processor_type": "BitImageProcessor"}))
