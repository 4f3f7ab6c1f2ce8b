"""Parity checks of the CLIP text and vision towers (clip_text.npz, clip_vision.npz) and of their host-side inputs:
the official prompt rule + tokenizer, and the retrieved-image preprocessing.

Everything is recomputed from the raw case inputs (raw prompts, raw retrieved images), so the chain is checked end
to end. Integer outputs must match exactly and are returned as 0/1 equality masks against ones (any mismatch is a
full unit of error); uint8 images follow the reference rule (|d| <= 1 on at most 0.5 % of pixels), returned as
violation counts against zero. Cases are NCHW; our vision tower is NHWC, so pixels are transposed here.
"""

import jax
import numpy as np

from mvrag_jax.inputs import images, text
from mvrag_jax.models import clip
from mvrag_jax.verify.arrays import exact, nchw, nhwc, retrieved_images, uint8_violations
from mvrag_jax.verify.models import ReleaseModels

def check_clip_text(models: ReleaseModels, case: dict[str, np.ndarray]) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    config, params = models.get("clip_text")
    tokenizer = text.load_tokenizer(models.release)
    encode = jax.jit(clip.encode_text)
    ids = text.tokenize(tokenizer, [text.process_prompt(str(p)) for p in case["prompts"]])  # [n, 77]
    uncond_ids = text.tokenize(tokenizer, [""])  # [1, 77]: the default negative prompt, not suffixed
    cfg_ids = text.prompt_input_ids(tokenizer, str(case["encode_prompt_prompt"]))  # [2, 77]: [uncond, cond]
    return {
        "input_ids": exact(ids, case["input_ids"]),
        "uncond_input_ids": exact(uncond_ids, case["uncond_input_ids"]),
        "last_hidden_state": (encode(config, params, ids), case["last_hidden_state"]),
        "uncond_last_hidden_state": (encode(config, params, uncond_ids), case["uncond_last_hidden_state"]),
        "encode_prompt_embeds": (encode(config, params, cfg_ids), case["encode_prompt_embeds"]),
    }


def check_clip_vision(models: ReleaseModels, case: dict[str, np.ndarray]) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    config, params = models.get("clip_vision")
    run = jax.jit(clip.encode_images)
    out = run(config, params, nhwc(case["pixel_values"]))
    # [k, 256, 256, 3] uint8: pad_to_square + Resize(256) of each raw retrieved image
    transformed = np.stack([images.pipeline_transform(image) for image in retrieved_images(case)])
    processor = images.CLIPImageProcessorConfig.from_release(models.release)
    pixel_values = images.clip_preprocess(list(transformed), processor)  # [k, s, s, 3]
    pipe_out = run(config, params, pixel_values)
    return {
        "hidden_states_m2": (out.hidden_states[-2], case["hidden_states_m2"]),
        "last_hidden_state": (out.last_hidden_state, case["last_hidden_state"]),
        "pooler_output": (out.pooler_output, case["pooler_output"]),
        "all_hidden_states": (np.stack(out.hidden_states), case["all_hidden_states"]),
        "pipe_transformed_uint8_violations": (uint8_violations(transformed, case["pipe_transformed_uint8"]),
                                              np.zeros(2, np.float32)),
        "pipe_pixel_values": (nchw(pixel_values), case["pipe_pixel_values"]),
        "pipe_hidden_states_m2": (pipe_out.hidden_states[-2], case["pipe_hidden_states_m2"]),
    }
