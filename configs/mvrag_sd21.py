"""The released MV-RAG model: SD2.1-base multiview UNet (MVDream) + Perceiver resampler over CLIP ViT-H/14 features.

    mvrag bench unet --config configs/mvrag_sd21.py
    mvrag bench unet --config configs/mvrag_sd21.py --config.runtime.dtype=bfloat16
"""

import ml_collections as mlc

from configs import common


def get_config(arg: str | None = None) -> mlc.ConfigDict:
    del arg
    return mlc.ConfigDict({
        "model": {
            "num_frames": 4,
            "image_size": 256,
            "num_retrieved": 4,
            "unet": {
                "image_size": 32, "in_channels": 4, "out_channels": 4, "model_channels": 320,
                "num_res_blocks": 2, "attention_resolutions": (4, 2, 1), "channel_mult": (1, 2, 4, 4),
                "num_head_channels": 64, "context_dim": 1024, "camera_dim": 16, "transformer_depth": 1,
            },
            "resampler": {
                "dim": 1024, "depth": 4, "dim_head": 64, "heads": 12, "num_queries": 16,
                "embedding_dim": 1280, "output_dim": 1024, "ff_mult": 4,
            },
            # Frozen encoders; field names follow the release's (transformers/diffusers) config.json files.
            "clip_text": {  # OpenCLIP ViT-H text tower minus its last layer (SD2.1 text_encoder)
                "vocab_size": 49408, "hidden_size": 1024, "intermediate_size": 4096, "num_hidden_layers": 23,
                "num_attention_heads": 16, "max_position_embeddings": 77, "hidden_act": "gelu",
                "layer_norm_eps": 1e-5,
            },
            "clip_vision": {  # CLIP ViT-H/14 (image_encoder, no projection head)
                "hidden_size": 1280, "intermediate_size": 5120, "num_hidden_layers": 32, "num_attention_heads": 16,
                "image_size": 224, "patch_size": 14, "num_channels": 3, "hidden_act": "gelu", "layer_norm_eps": 1e-5,
            },
            "vae": {  # SD2.1 AutoencoderKL
                "in_channels": 3, "out_channels": 3, "block_out_channels": (128, 256, 512, 512),
                "layers_per_block": 2, "latent_channels": 4, "norm_num_groups": 32, "scaling_factor": 0.18215,
            },
            "dinov2": {  # facebook/dinov2-base
                "hidden_size": 768, "num_hidden_layers": 12, "num_attention_heads": 12, "mlp_ratio": 4,
                "patch_size": 14, "image_size": 518, "num_channels": 3, "layer_norm_eps": 1e-6,
                "layerscale_value": 1.0, "hidden_act": "gelu", "qkv_bias": True,
            },
        },
        "runtime": common.runtime(),
        "mesh": common.mesh(),
    })
