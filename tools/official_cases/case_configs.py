"""Release configurations for the official reference cases (plain dicts, JSON-serialisable; written into each set's
README). Config A is the one of tests/reference (kept here so its cases can be regenerated to validate the tool);
B and C differ in every size the release and the call can vary.

Keys: the release component sizes (unet, resampler, clip_text, clip_vision, vae, dinov2, processors, tokenizer merges,
on-disk weight dtypes) and the case inputs (prompts, retrieved image sizes, camera params, pipeline call, DDIM run).
"""

import copy

# Limits of the official code itself (not ours): transformer_depth must be 1 (SpatialTransformer3D indexes its
# one-element context list per block: depth 2 raises IndexError), camera_dim must be 16 (the pipeline always passes
# get_camera's flattened 4x4 poses), latent channels must be 4 (prepare_latents hard-codes them) and UNet channel
# counts must be multiples of 32 (GroupNorm(32, ch) is hard-coded).

SCHEDULER = {"_class_name": "DDIMScheduler", "_diffusers_version": "0.31.0", "beta_end": 0.012,
             "beta_schedule": "scaled_linear", "beta_start": 0.00085, "clip_sample": False,
             "num_train_timesteps": 1000, "prediction_type": "epsilon", "set_alpha_to_one": False,
             "skip_prk_steps": True, "steps_offset": 1, "trained_betas": None}

CONFIG_A = {
    "seed": 1234,
    "num_frames": 4,
    "image_size": 32,
    "k": 2,
    "unet": {"image_size": 16, "in_channels": 4, "out_channels": 4, "model_channels": 32, "num_res_blocks": 1,
             "attention_resolutions": [2, 1], "channel_mult": [1, 2, 2], "num_head_channels": 16,
             "context_dim": 32, "camera_dim": 16, "transformer_depth": 1},
    "resampler": {"dim": 32, "depth": 2, "dim_head": 8, "heads": 4, "num_queries": 4, "embedding_dim": 48,
                  "output_dim": 32, "ff_mult": 4},
    "clip_vision": {"hidden_size": 48, "intermediate_size": 96, "num_hidden_layers": 2, "num_attention_heads": 4,
                    "image_size": 32, "patch_size": 8, "projection_dim": 32, "hidden_act": "gelu",
                    "layer_norm_eps": 1e-05},
    "clip_vision_proc": {"shortest_edge": 32, "crop": 32},
    "clip_text": {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 2,
                  "max_position_embeddings": 77, "projection_dim": 32, "hidden_act": "gelu", "layer_norm_eps": 1e-05},
    "vae": {"block_out_channels": [32, 64], "layers_per_block": 1, "latent_channels": 4, "norm_num_groups": 32},
    "dinov2": {"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2, "mlp_ratio": 4, "patch_size": 7,
               "image_size": 28},
    "dinov2_proc": {"shortest_edge": 48, "crop": 42},
    "num_merges": 60,
    "weights_dtype": {},  # component -> on-disk dtype ("float16"/"bfloat16"); default float32
    "pipe": {"prompt": "A red vintage car.", "elevation": 15, "azimuth_start": 0, "num_inference_steps": 4,
             "num_initial_steps": 3, "guidance_scale": 5.0, "seed": 7, "eta": 0.0},
    "ddim": {"steps": 5, "guidance_scale": 5.0, "scale": 0.6},
    # case inputs
    "prompts": ["A red vintage car.", "A cute cat.", "the blue teapot on a table", ""],
    "ret_image_sizes": [[30, 40], [44, 28]],           # [h, w] of the synthetic retrieved images
    "camera_params": [[4, 15, 0], [4, 15, 0], [4, -10, 30], [2, 0, 90], [1, 45, 270]],
    "unet_timesteps": [981, 341],
    "unet_ip_scale": 0.7,
}

# B: 2 views, k=3, 48 px images through a 3-level VAE (factor 4, 16 groups), 2-level UNet with num_heads (not
# num_head_channels), attention only at ds=2, 2 res blocks, other CLIP/DINOv2/processor sizes, quick_gelu vision
# tower, fewer tokenizer merges, UNet stored in float16 and VAE in bfloat16 on disk.
CONFIG_B = {
    "seed": 4321,
    "num_frames": 2,
    "image_size": 48,
    "k": 3,
    "unet": {"image_size": 12, "in_channels": 4, "out_channels": 4, "model_channels": 32, "num_res_blocks": 2,
             "attention_resolutions": [2], "channel_mult": [1, 1], "num_heads": 2,
             "context_dim": 40, "camera_dim": 16, "transformer_depth": 1},
    "resampler": {"dim": 48, "depth": 3, "dim_head": 16, "heads": 3, "num_queries": 6, "embedding_dim": 40,
                  "output_dim": 40, "ff_mult": 2},
    "clip_vision": {"hidden_size": 40, "intermediate_size": 80, "num_hidden_layers": 3, "num_attention_heads": 5,
                    "image_size": 24, "patch_size": 6, "projection_dim": 24, "hidden_act": "quick_gelu",
                    "layer_norm_eps": 1e-05},
    "clip_vision_proc": {"shortest_edge": 28, "crop": 24},
    "clip_text": {"hidden_size": 40, "intermediate_size": 72, "num_hidden_layers": 3, "num_attention_heads": 4,
                  "max_position_embeddings": 77, "projection_dim": 24, "hidden_act": "gelu", "layer_norm_eps": 1e-05},
    "vae": {"block_out_channels": [16, 32, 32], "layers_per_block": 1, "latent_channels": 4, "norm_num_groups": 16},
    "dinov2": {"hidden_size": 24, "num_hidden_layers": 3, "num_attention_heads": 3, "mlp_ratio": 2, "patch_size": 5,
               "image_size": 30},
    "dinov2_proc": {"shortest_edge": 40, "crop": 35},
    "num_merges": 40,
    "weights_dtype": {"unet": "float16", "vae": "bfloat16"},
    "pipe": {"prompt": "A small wooden chair.", "elevation": 10, "azimuth_start": 45, "num_inference_steps": 3,
             "num_initial_steps": 2, "guidance_scale": 4.0, "seed": 11, "eta": 0.0},
    "ddim": {"steps": 4, "guidance_scale": 3.5, "scale": 0.9},
    "prompts": ["A small wooden chair.", "an old brass lamp", "Two red apples on a plate."],
    "ret_image_sizes": [[36, 20], [25, 25], [40, 52]],
    "camera_params": [[2, 10, 45], [2, 15, 0], [3, -5, 10], [6, 20, 0], [1, 0, 0]],
    "unet_timesteps": [901, 121],
    "unet_ip_scale": 1.2,
}

# C: 6 views, k=1, 32 px images, 2-level VAE with 2 blocks per level, 3-level UNet with num_head_channels 8 and
# attention at every level, resampler and CLIP/DINOv2 at other sizes, quick_gelu text tower, UNet and text encoder
# in bfloat16 and VAE in float16 on disk.
CONFIG_C = {
    "seed": 99,
    "num_frames": 6,
    "image_size": 32,
    "k": 1,
    "unet": {"image_size": 16, "in_channels": 4, "out_channels": 4, "model_channels": 32, "num_res_blocks": 1,
             "attention_resolutions": [1, 2, 4], "channel_mult": [1, 1, 1], "num_head_channels": 8,
             "context_dim": 24, "camera_dim": 16, "transformer_depth": 1},
    "resampler": {"dim": 24, "depth": 1, "dim_head": 12, "heads": 2, "num_queries": 3, "embedding_dim": 36,
                  "output_dim": 24, "ff_mult": 3},
    "clip_vision": {"hidden_size": 36, "intermediate_size": 48, "num_hidden_layers": 2, "num_attention_heads": 3,
                    "image_size": 20, "patch_size": 4, "projection_dim": 16, "hidden_act": "gelu",
                    "layer_norm_eps": 1e-05},
    "clip_vision_proc": {"shortest_edge": 20, "crop": 20},
    "clip_text": {"hidden_size": 24, "intermediate_size": 48, "num_hidden_layers": 1, "num_attention_heads": 3,
                  "max_position_embeddings": 77, "projection_dim": 16, "hidden_act": "quick_gelu",
                  "layer_norm_eps": 1e-05},
    "vae": {"block_out_channels": [32, 32], "layers_per_block": 2, "latent_channels": 4, "norm_num_groups": 32},
    "dinov2": {"hidden_size": 16, "num_hidden_layers": 1, "num_attention_heads": 2, "mlp_ratio": 4, "patch_size": 4,
               "image_size": 16},
    "dinov2_proc": {"shortest_edge": 24, "crop": 24},
    "num_merges": 50,
    "weights_dtype": {"unet": "bfloat16", "vae": "float16", "clip_text": "bfloat16"},
    "pipe": {"prompt": "a green ceramic vase", "elevation": 0, "azimuth_start": 90, "num_inference_steps": 2,
             "num_initial_steps": 2, "guidance_scale": 6.0, "seed": 3, "eta": 0.0},
    "ddim": {"steps": 3, "guidance_scale": 7.5, "scale": 0.25},
    "prompts": ["a green ceramic vase", "A dog."],
    "ret_image_sizes": [[33, 47]],
    "camera_params": [[6, 0, 90], [6, 15, 0], [5, 30, 10], [4, -20, 200], [2, 5, 5]],
    "unet_timesteps": [999, 501],
    "unet_ip_scale": 0.3,
}

CONFIGS = {"A": CONFIG_A, "B": CONFIG_B, "C": CONFIG_C}


def get_config(name: str) -> dict:
    if name not in CONFIGS:
        raise SystemExit(f"make_cases: error: unknown config {name!r}; choose one of {', '.join(CONFIGS)}")
    return copy.deepcopy(CONFIGS[name])
