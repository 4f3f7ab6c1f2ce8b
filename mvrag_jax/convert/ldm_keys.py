"""The rename tables from the single-file (ldm/sgm) layout of MVDream and ImageDream to the release keys our modules
mirror (mvrag_jax/convert/keys.py then maps those to Flax paths).

The official MVDream `sd-v2.1-base-4view.pt` is the state_dict of `mvdream.ldm.interface.LatentDiffusionInterface`:
  model.diffusion_model.*      MultiViewUNetModel (input_blocks/middle_block/output_blocks, time_embed, camera_embed)
  first_stage_model.*          ldm AutoencoderKL (encoder.down.N.block.M, mid.block_1, mid.attn_1, ...)
  cond_stage_model.model.*     OpenCLIP ViT-H-14 text tower (visual deleted; the last resblock unused: "penultimate")
  betas, alphas_cumprod, ...   schedule buffers (the DDPM schedule; our scheduler comes from the release)
ImageDream's `sd-v2.1-base-4view-ipmv.pt` (imagedream.ldm.interface) adds `model.diffusion_model.image_embed.*` (the
resampler) and `attn2.to_k_ip/to_v_ip` in every transformer block, and names its stages `vae_model.` / `clip_model.`.

UNet: after the prefix, ldm keys ARE the MV-RAG release keys (MV-RAG's mv_unet.py kept ldm's module names), so the
table is the identity; `image_embed.` becomes the separate `resampler` component (MV-RAG's resampler/ folder).

Every table below is a list of (ldm template, release template) pairs, applied first-match; `{i}` matches a number,
`{r}` a number counted from the other end (ldm numbers decoder levels from the bottom, diffusers from the top: r ->
levels - 1 - r, its own inverse). `rename(key, table)` and `rename(key, table, inverse=True)` are exact inverses.
"""

import re
from typing import Iterable, Mapping

import numpy as np

UNET_PREFIX = "model.diffusion_model."
RESAMPLER_PREFIX = "image_embed."  # inside the UNet: the resampler of ImageDream (and its diffusers port)

# ldm Encoder/Decoder -> diffusers AutoencoderKL. The mid-block attention of ldm is 1x1 convs ([c, c, 1, 1]); the
# VAE's own normalize_keys turns those into Linear weights, as for legacy diffusers files.
VAE_TABLE = (
    ("encoder.down.{i}.block.{j}.nin_shortcut.", "encoder.down_blocks.{i}.resnets.{j}.conv_shortcut."),
    ("encoder.down.{i}.block.{j}.", "encoder.down_blocks.{i}.resnets.{j}."),
    ("encoder.down.{i}.downsample.conv.", "encoder.down_blocks.{i}.downsamplers.0.conv."),
    ("decoder.up.{r}.block.{j}.nin_shortcut.", "decoder.up_blocks.{r}.resnets.{j}.conv_shortcut."),
    ("decoder.up.{r}.block.{j}.", "decoder.up_blocks.{r}.resnets.{j}."),
    ("decoder.up.{r}.upsample.conv.", "decoder.up_blocks.{r}.upsamplers.0.conv."),
    ("encoder.mid.block_1.", "encoder.mid_block.resnets.0."),
    ("encoder.mid.block_2.", "encoder.mid_block.resnets.1."),
    ("decoder.mid.block_1.", "decoder.mid_block.resnets.0."),
    ("decoder.mid.block_2.", "decoder.mid_block.resnets.1."),
    ("encoder.mid.attn_1.norm.", "encoder.mid_block.attentions.0.group_norm."),
    ("encoder.mid.attn_1.q.", "encoder.mid_block.attentions.0.to_q."),
    ("encoder.mid.attn_1.k.", "encoder.mid_block.attentions.0.to_k."),
    ("encoder.mid.attn_1.v.", "encoder.mid_block.attentions.0.to_v."),
    ("encoder.mid.attn_1.proj_out.", "encoder.mid_block.attentions.0.to_out.0."),
    ("decoder.mid.attn_1.norm.", "decoder.mid_block.attentions.0.group_norm."),
    ("decoder.mid.attn_1.q.", "decoder.mid_block.attentions.0.to_q."),
    ("decoder.mid.attn_1.k.", "decoder.mid_block.attentions.0.to_k."),
    ("decoder.mid.attn_1.v.", "decoder.mid_block.attentions.0.to_v."),
    ("decoder.mid.attn_1.proj_out.", "decoder.mid_block.attentions.0.to_out.0."),
    ("encoder.norm_out.", "encoder.conv_norm_out."),
    ("decoder.norm_out.", "decoder.conv_norm_out."),
    ("encoder.conv_in.", "encoder.conv_in."), ("encoder.conv_out.", "encoder.conv_out."),
    ("decoder.conv_in.", "decoder.conv_in."), ("decoder.conv_out.", "decoder.conv_out."),
    ("quant_conv.", "quant_conv."), ("post_quant_conv.", "post_quant_conv."),
)

# OpenCLIP text tower (open_clip.model.CLIP) -> transformers CLIPTextModel (SD2.1's text_encoder/). The fused
# `attn.in_proj_weight/bias` [3w, w] splits into q/k/v (see split_in_proj); it has no single-key counterpart.
TEXT_TABLE = (
    ("token_embedding.", "embeddings.token_embedding."),
    ("positional_embedding", "embeddings.position_embedding.weight"),
    ("transformer.resblocks.{i}.ln_1.", "encoder.layers.{i}.layer_norm1."),
    ("transformer.resblocks.{i}.ln_2.", "encoder.layers.{i}.layer_norm2."),
    ("transformer.resblocks.{i}.attn.out_proj.", "encoder.layers.{i}.self_attn.out_proj."),
    ("transformer.resblocks.{i}.mlp.c_fc.", "encoder.layers.{i}.mlp.fc1."),
    ("transformer.resblocks.{i}.mlp.c_proj.", "encoder.layers.{i}.mlp.fc2."),
    ("ln_final.", "final_layer_norm."),
)
IN_PROJ = re.compile(r"^transformer\.resblocks\.(\d+)\.attn\.in_proj_(weight|bias)$")
# OpenCLIP text keys with no CLIPTextModel counterpart: the contrastive head, which SD2.1 conditioning never uses.
TEXT_UNUSED = ("text_projection", "logit_scale", "attn_mask")
RESBLOCK = re.compile(r"^transformer\.resblocks\.(\d+)\.")


def _compile(template: str) -> re.Pattern:
    pattern = re.escape(template).replace(r"\{i\}", r"(?P<i>\d+)").replace(r"\{j\}", r"(?P<j>\d+)")
    return re.compile("^" + pattern.replace(r"\{r\}", r"(?P<r>\d+)"))


def rename(key: str, table: Iterable[tuple[str, str]], *, levels: int = 0, inverse: bool = False) -> str | None:
    """`key` through the first matching row of `table` (ldm -> release, or release -> ldm with `inverse`); None when
    no row matches. `levels` is the number of decoder levels, for `{r}`."""
    for ldm, ours in table:
        source, target = (ours, ldm) if inverse else (ldm, ours)
        match = _compile(source).match(key)
        if match:
            values = {name: int(value) for name, value in match.groupdict().items()}
            if "r" in values:
                values["r"] = levels - 1 - values["r"]
            return target.format(**values) + key[match.end():]
    return None


def split_in_proj(key: str, array: np.ndarray) -> dict[str, np.ndarray]:
    """`transformer.resblocks.N.attn.in_proj_weight` [3w, w] (or `_bias` [3w]) -> the q/k/v projections of layer N."""
    match = IN_PROJ.match(key)
    layer, leaf = match.group(1), match.group(2)
    return {f"encoder.layers.{layer}.self_attn.{name}_proj.{leaf}": part
            for name, part in zip("qkv", np.split(np.asarray(array), 3, axis=0))}


def fuse_in_proj(state_dict: Mapping[str, np.ndarray], layer: int, leaf: str) -> np.ndarray:
    """Inverse of split_in_proj for one layer and leaf (`weight` or `bias`)."""
    return np.concatenate([state_dict[f"encoder.layers.{layer}.self_attn.{name}_proj.{leaf}"] for name in "qkv"])


def text_layers(keys: Iterable[str]) -> int:
    """Number of OpenCLIP resblocks in `keys` (highest index + 1; a gap shows up as missing keys later)."""
    found = [int(m.group(1)) for m in map(RESBLOCK.match, keys) if m]
    return max(found, default=-1) + 1


def vae_levels(keys: Iterable[str]) -> int:
    """Number of ldm decoder levels (`decoder.up.N.`) in `keys`."""
    found = [int(m.group(1)) for m in map(re.compile(r"^decoder\.up\.(\d+)\.").match, keys) if m]
    return max(found, default=-1) + 1
