"""Tiny sizes of tests/reference/tiny_release: for tests, smoke runs and benchmarks on a laptop.

    mvrag bench unet --config configs/tiny.py
    mvrag bench unet --config configs/tiny.py:size=medium
"""

import ml_collections as mlc

from configs import common, mvrag_sd21
from mvrag_jax.errors import UsageError


def get_config(arg: str | None = None) -> mlc.ConfigDict:
    args = common.parse_arg(arg, size="tiny")
    config = mvrag_sd21.get_config()
    model = config.model
    model.image_size, model.num_retrieved = 32, 2
    model.resampler.update(dim=32, depth=2, dim_head=8, heads=4, num_queries=4, embedding_dim=48, output_dim=32)
    model.clip_text.update(vocab_size=574, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                           num_attention_heads=2)
    model.clip_vision.update(hidden_size=48, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
                             image_size=32, patch_size=8)
    model.vae.update(block_out_channels=(32, 64), layers_per_block=1)
    model.dinov2.update(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, patch_size=7, image_size=28)
    if args.size == "tiny":
        model.unet.update(image_size=16, model_channels=32, num_res_blocks=1, attention_resolutions=(2, 1),
                          channel_mult=(1, 2, 2), num_head_channels=16, context_dim=32)
    elif args.size == "medium":  # ~1/4 of the real width at the real depth: a CPU-sized stand-in for benchmarks
        model.unet.update(image_size=16, model_channels=64, num_res_blocks=2, attention_resolutions=(4, 2, 1),
                          channel_mult=(1, 2, 4, 4), num_head_channels=32, context_dim=32)
    else:
        raise UsageError(f"configs/tiny.py: size={args.size!r}; choose tiny or medium")
    return config
