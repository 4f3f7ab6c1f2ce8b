"""MVDream and ImageDream checkpoints -> our (config, params) per component, from either published form:

- the official single file (`sd-v2.1-base-4view.pt`, `sd-v2.1-base-4view-ipmv.pt`, or a `.safetensors` of the same
  state dict): ldm/sgm keys (mvrag_jax/convert/ldm_keys.py), sizes from the official YAML it was built with
  (`--mvdream-config`/`--imagedream-config`; default: the SD2.1 configs of the official repos, SD21_CONFIGS below);
- the diffusers port (`mvdream-sd2.1-diffusers`, `imagedream-ipmv-diffusers`, a folder with model_index.json):
  MV-RAG's own layout (unet/, vae/, text_encoder/, image_encoder/) except that the resampler sits inside the UNet as
  `image_embed.*`.

ImageDream's resampler vs MV-RAG's: the same class (open_flamingo's Perceiver resampler: layers.N.0 attention,
layers.N.1 LayerNorm/Linear/GELU/Linear FF, proj_in/proj_out/norm_out, learned latents) at the same sizes (dim 1024,
depth 4, dim_head 64, heads 12, 16 queries, 1280-wide CLIP ViT-H/14 penultimate features in, 1024 out). What differs
is the use: ImageDream resamples ONE reference image per object, appends its tokens to the text context (attn2
splits off the last `ip_dim`) and adds `out + ip_weight * out_ip` (ip_weight 1.0); MV-RAG resamples k retrieved
images into k*16 separate tokens and combines `scale * out + (1.5 - scale) * out_ip` (models/attention.py). ImageDream
hard-codes dim_head=64, so heads = (to_q width) / 64; everything else comes from the tensor shapes.
"""

import dataclasses
import pathlib
from typing import Any

import numpy as np
import yaml

from mvrag_jax.convert.components import COMPONENTS_BY_NAME, abstract_params, convert_component
from mvrag_jax.convert.keys import CheckpointKeyError, listing, state_dict_to_params
from mvrag_jax.convert import ldm_keys
from mvrag_jax.convert.single_file import read_state_dict
from mvrag_jax.models import clip, resampler, unet, vae
from mvrag_jax.inputs.release import Release
from mvrag_jax.errors import MvragError

IMAGEDREAM_DIM_HEAD = 64  # hard-coded in ImageDream's MultiViewUNetModel (Resampler(dim_head=64, heads=12))
OPENCLIP_HEAD_WIDTH = 64  # open_clip text towers: heads = width / 64 (ViT-H-14: 1024 wide, 16 heads)
# Keys of the single files that no component takes: the DDPM schedule buffers of LatentDiffusionInterface (our
# scheduler comes from the release), and ImageDream's own VAE and OpenCLIP towers (paper C.2: the frozen parts come
# from MVDream; ImageDream's OpenCLIP vision tower is not converted because its head count is in no file: the CLIP
# ViT-H/14 vision tower comes from --release or the ImageDream diffusers port's image_encoder/).
SCHEDULE_BUFFERS = ("betas", "alphas_cumprod", "alphas_cumprod_prev", "sqrt_alphas_cumprod",
                    "sqrt_one_minus_alphas_cumprod", "log_one_minus_alphas_cumprod", "sqrt_recip_alphas_cumprod",
                    "sqrt_recipm1_alphas_cumprod", "posterior_variance", "posterior_log_variance_clipped",
                    "posterior_mean_coef1", "posterior_mean_coef2", "logvar")

# The `model.params` of the official YAMLs the released files were built with, reduced to what sizes the models
# (mvdream/configs/sd-v2-base.yaml, extern/ImageDream/imagedream/configs/sd_v2_base_ipmv.yaml). Both UNets and VAEs
# are SD2.1's; ImageDream adds with_ip/ip_dim 16 and renames the stages (vae_config, clip_config).
_SD21_UNET = {"image_size": 32, "in_channels": 4, "out_channels": 4, "model_channels": 320,
              "attention_resolutions": [4, 2, 1], "num_res_blocks": 2, "channel_mult": [1, 2, 4, 4],
              "num_head_channels": 64, "use_spatial_transformer": True, "use_linear_in_transformer": True,
              "transformer_depth": 1, "context_dim": 1024, "legacy": False, "camera_dim": 16}
_SD21_VAE = {"embed_dim": 4, "ddconfig": {"double_z": True, "z_channels": 4, "resolution": 256, "in_channels": 3,
                                          "out_ch": 3, "ch": 128, "ch_mult": [1, 2, 4, 4], "num_res_blocks": 2,
                                          "attn_resolutions": [], "dropout": 0.0}}
SD21_CONFIGS = {
    "mvdream": {"scale_factor": 0.18215, "unet_config": {"params": _SD21_UNET},
                "first_stage_config": {"params": _SD21_VAE},
                "cond_stage_config": {"params": {"freeze": True, "layer": "penultimate"}}},
    "imagedream": {"scale_factor": 0.18215,
                   "unet_config": {"params": dict(_SD21_UNET, with_ip=True, ip_dim=16, ip_mode="local_resample")},
                   "vae_config": {"params": _SD21_VAE},
                   "clip_config": {"params": {"freeze": True, "layer": "penultimate", "ip_mode": "local_resample"}}},
}
# ImageDream's VAE and OpenCLIP stages, under either naming (its interface's, or the sgm trainer's), are not used.
_UNUSED_STAGES = ("vae_model.", "clip_model.", "first_stage_model.", "cond_stage_model.")
# Per model: (VAE stage key in the YAML, its state-dict prefix, text stage key, its prefix).
_STAGES = {"mvdream": ("first_stage_config", "first_stage_model.", "cond_stage_config", "cond_stage_model.model."),
           "imagedream": ("vae_config", "vae_model.", "clip_config", "clip_model.model.")}
_UNET_HINTS = {
    "mvdream": "an MVDream UNet has no image branch: to_k_ip/to_v_ip or image_embed keys mean you passed the "
               "ImageDream checkpoint as --mvdream; other mismatches mean the checkpoint does not match its YAML "
               "(pass --mvdream-config with the config the file was released with)",
    "imagedream": "an ImageDream UNet has attn2.to_k_ip/to_v_ip in every transformer block and an image_embed "
                  "resampler; missing ones mean you passed the MVDream checkpoint as --imagedream; other mismatches "
                  "mean the file does not match its YAML (pass --imagedream-config)",
}


class SourceError(MvragError, ValueError):
    """An MVDream/ImageDream source or its config cannot give the components asked of it."""


@dataclasses.dataclass
class Converted:
    """What one source gave: our configs and float32 params per component, and (diffusers port) its non-weight
    files by release-relative name."""
    configs: dict[str, Any]
    params: dict[str, Any]
    files: dict[str, pathlib.Path] = dataclasses.field(default_factory=dict)


def read_official_config(path: str | pathlib.Path | None, model: str) -> dict[str, Any]:
    """`model.params` of an official MVDream/ImageDream YAML (None: the SD2.1 config of the official repo)."""
    if path is None:
        return SD21_CONFIGS[model]
    path = pathlib.Path(path)
    try:
        loaded = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as e:
        raise SourceError(f"cannot read the {model} config {path}: {e}; pass the official YAML "
                          f"(e.g. {'sd-v2-base.yaml' if model == 'mvdream' else 'sd_v2_base_ipmv.yaml'})") from e
    params = (loaded or {}).get("model", {}).get("params") if isinstance(loaded, dict) else None
    needed = ("unet_config",) + _STAGES[model][0::2]
    if not isinstance(params, dict) or any(key not in params for key in needed):
        raise SourceError(f"{path} is not an official {model} config: it needs model.params with "
                          f"{', '.join(needed)}; pass the YAML the checkpoint was released with")
    return params


def load_source(path: str | pathlib.Path, model: str, config: str | pathlib.Path | None = None) -> Converted:
    """MVDream (`model="mvdream"`: unet without image branch, vae, clip_text) or ImageDream ("imagedream": unet with
    the image branch, resampler, and clip_vision when a diffusers port ships image_encoder/) from a file or a port."""
    path = pathlib.Path(path)
    if path.is_dir():
        if config is not None:
            raise SourceError(f"--{model}-config is for single-file checkpoints; {path} is a diffusers folder whose "
                              "configs are its own config.json files")
        return _load_port(Release.open(path), model)
    return _load_single_file(path, model, read_official_config(config, model))


# ---- single file ---------------------------------------------------------------------------------------------------
def _load_single_file(path: pathlib.Path, model: str, official: dict[str, Any]) -> Converted:
    state_dict = read_state_dict(path)
    vae_stage, vae_prefix, text_stage, text_prefix = _STAGES[model]
    groups: dict[str, dict[str, np.ndarray]] = {"unet": {}, "resampler": {}, "vae": {}, "text": {}}
    unexpected = []
    for key, array in state_dict.items():
        if key.startswith(ldm_keys.UNET_PREFIX):
            inner = key[len(ldm_keys.UNET_PREFIX):]
            if inner.startswith(ldm_keys.RESAMPLER_PREFIX):
                groups["resampler"][inner[len(ldm_keys.RESAMPLER_PREFIX):]] = array
            else:
                groups["unet"][inner] = array
        elif model == "mvdream" and key.startswith(vae_prefix):
            groups["vae"][key[len(vae_prefix):]] = array
        elif model == "mvdream" and key.startswith(text_prefix):
            groups["text"][key[len(text_prefix):]] = array
        elif key not in SCHEDULE_BUFFERS and not (model == "imagedream" and key.startswith(_UNUSED_STAGES)):
            unexpected.append(key)
    if unexpected:
        swapped = any(key.startswith(("vae_model.", "clip_model.")) for key in unexpected)
        hint = ("vae_model./clip_model. are ImageDream's stage names: you passed the ImageDream checkpoint as "
                "--mvdream" if swapped else f"pass the official {model} checkpoint (a LatentDiffusionInterface "
                "state dict)")
        raise CheckpointKeyError(f"{model} ({path}): keys outside the {model} layout "
                                 f"(model.diffusion_model., {vae_prefix}, {text_prefix}, schedule buffers): "
                                 f"{listing(sorted(unexpected))}\n  hint: {hint}")
    where = f"{model} ({path.name})"
    if model == "imagedream":
        if not groups["resampler"]:
            raise CheckpointKeyError(f"{where}: no model.diffusion_model.image_embed.* (the resampler)\n  hint: "
                                     f"{_UNET_HINTS['imagedream']}")
        unet_config = _unet_config(official, True, path)
        res_config = resampler_config(groups["resampler"], where)
        return Converted({"unet": unet_config, "resampler": res_config},
                         {"unet": _unet_params(groups["unet"], unet_config, model, where),
                          "resampler": _params("resampler", groups["resampler"], res_config, where)})
    unexpected = sorted(ldm_keys.UNET_PREFIX + ldm_keys.RESAMPLER_PREFIX + k for k in groups["resampler"])
    if unexpected:
        raise CheckpointKeyError(f"{where}: unexpected resampler keys {listing(unexpected)}\n  hint: "
                                 f"{_UNET_HINTS['mvdream']}")
    unet_config = _unet_config(official, False, path)
    vae_config = vae_config_from_ldm(official, vae_stage, path)
    text_config, text_state = text_from_openclip(groups["text"], official[text_stage].get("params", {}), where)
    return Converted(
        {"unet": unet_config, "vae": vae_config, "clip_text": text_config},
        {"unet": _unet_params(groups["unet"], unet_config, model, where),
         "vae": _params("vae", vae_keys_from_ldm(groups["vae"]), vae_config, where),
         "clip_text": _params("clip_text", text_state, text_config, where)})


def _unet_config(official: dict[str, Any], image_branch: bool, path: pathlib.Path) -> unet.UNetConfig:
    return unet.UNetConfig.from_kwargs(dict(official["unet_config"].get("params", {})), image_branch,
                                       where=f"the unet_config of {path.name}'s YAML")


def _unet_params(state_dict: dict, config: unet.UNetConfig, model: str, where: str) -> dict:
    return state_dict_to_params(state_dict, abstract_params(COMPONENTS_BY_NAME["unet"], config),
                                component=f"unet of {where}", hint=_UNET_HINTS[model])


def _params(name: str, state_dict: dict, config: Any, where: str) -> dict:
    component = COMPONENTS_BY_NAME[name]
    return state_dict_to_params(component.normalize_keys(state_dict), abstract_params(component, config),
                                component=f"{name} of {where}", hint=component.hint)


def resampler_config(state_dict: dict[str, np.ndarray], where: str) -> resampler.ResamplerConfig:
    """ImageDream's resampler sizes: from the tensor shapes, heads = to_q width / ImageDream's dim_head 64."""
    sizes = resampler.sizes_from_shapes({k: tuple(np.shape(v)) for k, v in state_dict.items()})
    inner = sizes.pop("inner", None)
    missing = [f for f in resampler.SIZE_FIELDS if f not in sizes and f not in ("heads", "dim_head")]
    if missing or inner is None:
        raise CheckpointKeyError(f"resampler of {where}: the image_embed tensors that give {missing or ['heads']} "
                                 "are missing\n  hint: the file is truncated or not an ImageDream checkpoint")
    if inner % IMAGEDREAM_DIM_HEAD:
        raise SourceError(f"resampler of {where}: to_q has {inner} outputs, not a multiple of ImageDream's "
                          f"dim_head={IMAGEDREAM_DIM_HEAD}; this is not an ImageDream resampler")
    return resampler.ResamplerConfig(**sizes, heads=inner // IMAGEDREAM_DIM_HEAD, dim_head=IMAGEDREAM_DIM_HEAD,
                                     source=f"tensor shapes of {where} (dim_head {IMAGEDREAM_DIM_HEAD} as ImageDream)")


def vae_config_from_ldm(official: dict[str, Any], stage: str, path: pathlib.Path) -> vae.VAEConfig:
    """The diffusers AutoencoderKL equivalent of the YAML's ldm AutoencoderKL (ddconfig + embed_dim)."""
    params = official[stage].get("params", {})
    dd, where = params.get("ddconfig", {}), f"the {stage} of {path.name}'s YAML"
    if dd.get("attn_resolutions"):
        raise SourceError(f"{where}: attn_resolutions={dd['attn_resolutions']}; only the SD2.1 VAE (attention in "
                          "the mid block only, attn_resolutions []) is implemented")
    if not dd.get("double_z", True) or params.get("embed_dim", dd.get("z_channels")) != dd.get("z_channels"):
        raise SourceError(f"{where}: double_z={dd.get('double_z')}, embed_dim={params.get('embed_dim')}, "
                          f"z_channels={dd.get('z_channels')}; the SD2.1 VAE has double_z and embed_dim = z_channels")
    try:
        return vae.VAEConfig(in_channels=int(dd["in_channels"]), out_channels=int(dd["out_ch"]),
                             block_out_channels=tuple(int(dd["ch"]) * int(m) for m in dd["ch_mult"]),
                             layers_per_block=int(dd["num_res_blocks"]), latent_channels=int(dd["z_channels"]),
                             scaling_factor=float(official.get("scale_factor", 0.18215)))
    except KeyError as e:
        raise SourceError(f"{where}: ddconfig lacks {e}; restore it from the official YAML") from e


def vae_keys_from_ldm(state_dict: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """ldm Encoder/Decoder keys -> diffusers AutoencoderKL keys (unknown keys kept, so the key check lists them)."""
    levels = ldm_keys.vae_levels(state_dict)
    return {ldm_keys.rename(key, ldm_keys.VAE_TABLE, levels=levels) or key: array for key, array in state_dict.items()}


def text_from_openclip(state_dict: dict[str, np.ndarray], stage: dict[str, Any],
                       where: str) -> tuple[clip.CLIPTextConfig, dict[str, np.ndarray]]:
    """OpenCLIP text tower -> (CLIPTextConfig, CLIPTextModel keys). With the YAML's layer "penultimate" (SD2.1,
    MVDream) the last resblock is never run, so it is dropped and the CLIPTextModel has one layer fewer (SD2.1's
    text_encoder has 23 of ViT-H-14's 24). Sizes from the shapes; heads = width / 64 (open_clip's head width)."""
    layer = stage.get("layer", "last")
    if layer not in ("last", "penultimate"):
        raise SourceError(f"{where}: cond stage layer={layer!r}; the official embedder knows last and penultimate")
    if "token_embedding.weight" not in state_dict or "positional_embedding" not in state_dict:
        raise CheckpointKeyError(f"clip_text of {where}: no OpenCLIP text tower (token_embedding.weight, "
                                 "positional_embedding)\n  hint: pass the official MVDream checkpoint")
    total = ldm_keys.text_layers(state_dict)
    kept = total - 1 if layer == "penultimate" else total
    converted, unknown = {}, []
    for key, array in state_dict.items():
        resblock = ldm_keys.RESBLOCK.match(key)
        if key in ldm_keys.TEXT_UNUSED or (resblock and int(resblock.group(1)) >= kept):
            continue
        if ldm_keys.IN_PROJ.match(key):
            converted.update(ldm_keys.split_in_proj(key, array))
            continue
        renamed = ldm_keys.rename(key, ldm_keys.TEXT_TABLE)
        if renamed is None:
            unknown.append(key)
        converted[renamed or key] = array
    width = int(np.shape(state_dict["token_embedding.weight"])[1])
    if width % OPENCLIP_HEAD_WIDTH:
        raise SourceError(f"clip_text of {where}: width {width} is not a multiple of open_clip's head width "
                          f"{OPENCLIP_HEAD_WIDTH}, so its head count is unknown")
    fc1 = converted.get("encoder.layers.0.mlp.fc1.weight")
    config = clip.CLIPTextConfig(
        vocab_size=int(np.shape(state_dict["token_embedding.weight"])[0]), hidden_size=width,
        intermediate_size=int(np.shape(fc1)[0]) if fc1 is not None else 4 * width, num_hidden_layers=kept,
        num_attention_heads=width // OPENCLIP_HEAD_WIDTH,
        max_position_embeddings=int(np.shape(state_dict["positional_embedding"])[0]),
        hidden_act="gelu")  # open_clip's nn.GELU (quick_gelu is off for ViT-H-14), as SD2.1's text_encoder
    return config, converted


# ---- diffusers port ------------------------------------------------------------------------------------------------
def _load_port(release: Release, model: str) -> Converted:
    where = f"{model} ({release.root.name})"
    shapes = release.shapes("unet")
    unet_state = release.weights("unet")
    res_state = {k[len(ldm_keys.RESAMPLER_PREFIX):]: v for k, v in unet_state.items()
                 if k.startswith(ldm_keys.RESAMPLER_PREFIX)}
    unet_state = {k: v for k, v in unet_state.items() if not k.startswith(ldm_keys.RESAMPLER_PREFIX)}
    image_branch = model == "imagedream"
    if image_branch and not res_state:
        raise CheckpointKeyError(f"{where}: its unet/ has no image_embed.* (the resampler)\n  hint: "
                                 f"{_UNET_HINTS['imagedream']}")
    if not image_branch and (res_state or any(".to_k_ip." in k for k in shapes)):
        raise CheckpointKeyError(f"{where}: its unet/ has image_embed.* or to_k_ip keys\n  hint: "
                                 f"{_UNET_HINTS['mvdream']}")
    unet_config = unet.UNetConfig.from_kwargs(release.config("unet") or {}, image_branch,
                                              where=f"{release.folder('unet')}/config.json")
    converted = Converted({"unet": unet_config}, {"unet": _unet_params(unet_state, unet_config, model, where)})
    if image_branch:
        converted.configs["resampler"] = resampler_config(res_state, where)
        converted.params["resampler"] = _params("resampler", res_state, converted.configs["resampler"], where)
    # MVDream's port must have vae/ and text_encoder/ (release.folder says which is missing); ImageDream's may ship
    # the CLIP ViT-H/14 vision tower (image_encoder/), the one encoder the single files do not give.
    names = ("clip_vision",) if image_branch else ("vae", "clip_text")
    for name in names:
        if not image_branch or release.has(name):
            converted.configs[name], converted.params[name] = convert_component(release, COMPONENTS_BY_NAME[name])
    converted.files = {str(p.relative_to(release.root)): p for p in sorted(release.root.rglob("*"))
                       if p.is_file() and not _is_weights(p)}
    return converted


def _is_weights(path: pathlib.Path) -> bool:
    return path.suffix in (".safetensors", ".bin", ".ckpt", ".pt", ".pth", ".msgpack", ".h5") \
        or path.name.endswith(".safetensors.index.json")

