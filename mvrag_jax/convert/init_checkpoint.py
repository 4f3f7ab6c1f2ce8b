"""The training init of paper C.2 as one checkpoint (the format `mvrag convert --release` writes):

    mvrag convert --mvdream sd-v2.1-base-4view.pt --imagedream sd-v2.1-base-4view-ipmv.pt --release MVRAG --out CKPT
    mvrag train --config configs/train.py --config.train.init CKPT

- frozen parts from MVDream: the UNet (everything but to_k_ip/to_v_ip), the VAE and the CLIP text tower;
- the adapters from ImageDream: the resampler (its `image_embed`) and every attn2.to_k_ip/to_v_ip;
- the encoders the two do not give from the ImageDream diffusers port (image_encoder/) or the MV-RAG release R
  (CLIP ViT-H/14 vision tower; DINOv2, inference only, R only), and R's tokenizer, scheduler and processors.
Without --imagedream the checkpoint is a text-only base (training then starts the adapters IP-Adapter-style).
The checkpoint's release_files/ are R's (or the ports') non-weight files with unet/, resampler/, text_encoder/ and
vae/config.json rewritten to describe the converted weights, so `mvrag export` writes a loadable MV-RAG release.
"""

import json
import logging
import pathlib
import tempfile
from typing import Any

from mvrag_jax.convert.checkpoint import check_target, config_to_dict, save_checkpoint
from mvrag_jax.convert.components import COMPONENTS_BY_NAME, convert_component
from mvrag_jax.convert.keys import flatten, unflatten
from mvrag_jax.convert.ldm_sources import Converted, SourceError, load_source
from mvrag_jax.models.unet import UNetConfig
from mvrag_jax.inputs.release import Release

_LOG = logging.getLogger(__name__)
ADAPTER_MODULES = ("to_k_ip", "to_v_ip")  # the UNet's adapter projections (with the resampler: what trains)
_WEIGHT_SUFFIXES = (".safetensors", ".bin", ".ckpt", ".pt", ".pth", ".msgpack", ".h5")
_RUNTIME_FIELDS = ("image_branch", "num_frames", "dtype", "remat", "attention")


def convert_init(mvdream: str | pathlib.Path, out_dir: str | pathlib.Path, *,
                 imagedream: str | pathlib.Path | None = None, release: str | pathlib.Path | None = None,
                 mvdream_config: str | pathlib.Path | None = None,
                 imagedream_config: str | pathlib.Path | None = None, overwrite: bool = False) -> pathlib.Path:
    """Write the init checkpoint at `out_dir` (atomically); see the module docstring for what comes from where."""
    check_target(out_dir, overwrite)
    base = load_source(mvdream, "mvdream", mvdream_config)
    adapters = None if imagedream is None else load_source(imagedream, "imagedream", imagedream_config)
    rel = None if release is None else Release.open(release)
    configs, params = dict(base.configs), dict(base.params)
    if adapters is not None:
        configs["unet"], params["unet"] = merge_unet(base, adapters)
        configs["resampler"], params["resampler"] = adapters.configs["resampler"], adapters.params["resampler"]
    for name in ("clip_vision", "dinov2"):
        if adapters is not None and name in adapters.configs:
            configs[name], params[name] = adapters.configs[name], adapters.params[name]
        elif rel is not None and rel.has(name):
            configs[name], params[name] = convert_component(rel, COMPONENTS_BY_NAME[name])
    if "clip_vision" not in configs:
        _LOG.warning("no CLIP vision tower: the single files give none (ImageDream's OpenCLIP tower is not converted: "
                     "its head count is in no file); training needs one, so pass --release (an MV-RAG release) or "
                     "the ImageDream diffusers folder as --imagedream")
    check_sizes(configs)
    files = _base_files(rel, base, adapters)
    if "model_index.json" not in files:
        _LOG.warning("no model_index.json, tokenizer or scheduler (none of the sources is a release folder): "
                     "`mvrag export` and `mvrag generate` need them; pass --release")
    with tempfile.TemporaryDirectory() as tmp:
        files.update(_written_configs(configs, files, pathlib.Path(tmp)))
        return save_checkpoint(out_dir, configs, params, files, overwrite=overwrite)


def merge_unet(base: Converted, adapters: Converted) -> tuple[UNetConfig, dict]:
    """MVDream's UNet params plus ImageDream's to_k_ip/to_v_ip; the two UNets must be the same architecture."""
    mv, ip = base.configs["unet"], adapters.configs["unet"]
    differ = {f: (getattr(mv, f), getattr(ip, f)) for f in UNetConfig.__dataclass_fields__
              if f not in _RUNTIME_FIELDS and getattr(mv, f) != getattr(ip, f)}
    if differ:
        raise SourceError(f"the MVDream and ImageDream UNets differ in {differ} (MVDream, ImageDream); both must be "
                          "the same SD2.1 multiview UNet: pass matching checkpoints (and --*-config YAMLs)")
    merged = flatten(base.params["unet"])
    merged.update({path: value for path, value in flatten(adapters.params["unet"]).items()
                   if path[-2] in ADAPTER_MODULES})
    return UNetConfig(**{**config_to_dict(mv), "image_branch": True}), unflatten(merged)


def check_sizes(configs: dict[str, Any]) -> None:
    """The components must fit together: text width = UNet context = resampler output; CLIP vision width =
    resampler input."""
    pairs = [("clip_text.hidden_size", configs["clip_text"].hidden_size, "unet.context_dim",
              configs["unet"].context_dim)]
    if "resampler" in configs:
        pairs.append(("resampler.output_dim", configs["resampler"].output_dim, "unet.context_dim",
                      configs["unet"].context_dim))
        if "clip_vision" in configs:
            pairs.append(("clip_vision.hidden_size", configs["clip_vision"].hidden_size, "resampler.embedding_dim",
                          configs["resampler"].embedding_dim))
    bad = [f"{a}={x} but {b}={y}" for a, x, b, y in pairs if x != y]
    if bad:
        raise SourceError(f"the components do not fit together: {'; '.join(bad)}; the sources are models of "
                          "different sizes (e.g. --release R must be the SD2.1 MV-RAG release, whose CLIP ViT-H/14 "
                          "feeds the 1280-wide resampler)")


def _base_files(rel: Release | None, base: Converted, adapters: Converted | None) -> dict[str, pathlib.Path]:
    if rel is not None:
        return {str(p.relative_to(rel.root)): p for p in sorted(rel.root.rglob("*"))
                if p.is_file() and p.suffix not in _WEIGHT_SUFFIXES}
    files = dict(base.files)
    if adapters is not None:  # the port's image-encoder config and CLIP processor
        files.update({k: v for k, v in adapters.files.items() if k.startswith(("image_encoder/",
                                                                               "feature_extractor/"))})
    return files


def _written_configs(configs: dict[str, Any], files: dict[str, pathlib.Path],
                     tmp: pathlib.Path) -> dict[str, pathlib.Path]:
    """unet/, resampler/, text_encoder/ and vae/config.json describing the converted weights (over the base file's
    keys, so fields we do not model, like the tokenizer ids of text_encoder/config.json, stay)."""
    written = {}
    for rel_path, fields in (("unet/config.json", _unet_json(configs["unet"])),
                             ("resampler/config.json", _resampler_json(configs.get("resampler"))),
                             ("text_encoder/config.json", _text_json(configs["clip_text"])),
                             ("vae/config.json", _vae_json(configs["vae"]))):
        if fields is None:
            continue
        values = json.loads(files[rel_path].read_text()) if rel_path in files else {}
        path = tmp / rel_path
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps({**values, **fields}, indent=2))
        written[rel_path] = path
    return written


def _unet_json(config: UNetConfig) -> dict:
    fields = {"_class_name": "MultiViewUNetModel"}
    for name in ("image_size", "in_channels", "out_channels", "model_channels", "num_res_blocks",
                 "attention_resolutions", "channel_mult", "num_head_channels", "num_heads", "context_dim",
                 "camera_dim", "transformer_depth"):
        value = getattr(config, name)
        fields[name] = list(value) if isinstance(value, tuple) else value
    return fields


def _resampler_json(config) -> dict | None:
    if config is None:
        return None
    return {"_class_name": "Resampler", **{name: getattr(config, name) for name in
                                           ("dim", "depth", "dim_head", "heads", "num_queries", "embedding_dim",
                                            "output_dim", "ff_mult")}}


def _text_json(config) -> dict:
    return {"architectures": ["CLIPTextModel"], "model_type": "clip_text_model",
            **{name: getattr(config, name) for name in ("vocab_size", "hidden_size", "intermediate_size",
                                                        "num_hidden_layers", "num_attention_heads",
                                                        "max_position_embeddings", "hidden_act", "layer_norm_eps")}}


def _vae_json(config) -> dict:
    levels = len(config.block_out_channels)
    return {"_class_name": "AutoencoderKL", "in_channels": config.in_channels, "out_channels": config.out_channels,
            "block_out_channels": list(config.block_out_channels), "layers_per_block": config.layers_per_block,
            "latent_channels": config.latent_channels, "norm_num_groups": config.norm_num_groups,
            "scaling_factor": config.scaling_factor, "down_block_types": ["DownEncoderBlock2D"] * levels,
            "up_block_types": ["UpDecoderBlock2D"] * levels, "act_fn": "silu",
            "use_quant_conv": config.use_quant_conv, "use_post_quant_conv": config.use_post_quant_conv,
            "mid_block_add_attention": config.mid_block_add_attention}
