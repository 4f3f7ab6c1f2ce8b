"""The table of release components we convert, and the generic conversion of one component.

Each entry names the model module's pieces: its frozen config class (`from_release`), its pure `init_params(config,
rng)` and the likely-cause hint for key mismatches. Adding a component is adding a row here.
"""

import dataclasses
from typing import Any, Callable

import flax.linen as nn
import jax

from mvrag_jax.convert.keys import state_dict_to_params
from mvrag_jax.inputs.release import Release
from mvrag_jax.models import clip, dinov2, resampler, unet, vae


@dataclasses.dataclass(frozen=True)
class Component:
    name: str                                   # key in our checkpoint; folder via release.COMPONENT_FOLDERS
    config_class: type                          # frozen dataclass with from_release(Release) and from_dict(dict)
    init_params: Callable[[Any, jax.Array], Any]  # (config, rng) -> params tree (may be logically boxed)
    hint: str = ""                              # shown with key mismatches
    # Official state dict -> the keys our modules mirror (e.g. strip a `text_model.` prefix, drop buffers).
    normalize_keys: Callable[[dict], dict] = lambda state_dict: state_dict
    # Serves only the retrieval branch: optional in a release whose UNet has no to_k_ip/to_v_ip (MVDream-style base).
    image_branch: bool = False


COMPONENTS: tuple[Component, ...] = (
    Component("unet", unet.UNetConfig, unet.init_params,
              hint="an MV-RAG UNet has attn2.to_k_ip/to_v_ip in every transformer block; if those are missing you "
                   "passed the base MVDream UNet, if sizes differ the unet/config.json does not match the weights"),
    Component("resampler", resampler.ResamplerConfig, resampler.init_params,
              hint="the official Resampler ignores resampler/config.json; sizes are derived from the tensor shapes "
                   "when it is absent: check that config.json (if any) matches model.safetensors",
              image_branch=True),
    Component("clip_text", clip.CLIPTextConfig, clip.init_text_params,
              hint="text_encoder/ must hold a transformers CLIPTextModel (SD2.1: 23 layers, width 1024); if sizes "
                   "differ, text_encoder/config.json does not match model.safetensors",
              normalize_keys=clip.normalize_text_keys),
    Component("clip_vision", clip.CLIPVisionConfig, clip.init_vision_params,
              hint="image_encoder/ must hold a transformers CLIPVisionModel without projection head (ViT-H/14: 32 "
                   "layers, width 1280); a `visual_projection` key means a CLIPVisionModelWithProjection checkpoint",
              normalize_keys=clip.normalize_vision_keys, image_branch=True),
    Component("vae", vae.VAEConfig, vae.init_params,
              hint="vae/ must hold a diffusers AutoencoderKL (SD2.1: block_out_channels 128/256/512/512); if sizes "
                   "differ, vae/config.json does not match the weights",
              normalize_keys=vae.normalize_keys),
    Component("dinov2", dinov2.DINOv2Config, dinov2.init_params,
              hint="facebook/dinov2-base/ must hold a transformers Dinov2Model (hub key names); a `dinov2.` prefix "
                   "or a `classifier` key means a Dinov2ForImageClassification checkpoint",
              normalize_keys=dinov2.normalize_keys, image_branch=True),
)
COMPONENTS_BY_NAME = {c.name: c for c in COMPONENTS}


def release_components(release: Release) -> tuple[Component, ...]:
    """The components to convert from `release`: all of them for an MV-RAG release; for a text-only base (its UNet
    has no to_k_ip/to_v_ip) the retrieval-branch components only where the release ships their folders."""
    if unet.UNetConfig.from_release(release).image_branch:
        return COMPONENTS
    return tuple(c for c in COMPONENTS if not c.image_branch or release.has(c.name))


def abstract_params(component: Component, config: Any) -> Any:
    """Unboxed ShapeDtypeStruct tree of the component's params (nothing allocated)."""
    return nn.unbox(jax.eval_shape(component.init_params, config, jax.random.key(0)))


def convert_component(release: Release, component: Component) -> tuple[Any, dict]:
    """(config, float32 numpy params) of one component read from `release`; key mismatches raise CheckpointKeyError."""
    config = component.config_class.from_release(release)
    state_dict = component.normalize_keys(release.weights(component.name))
    params = state_dict_to_params(state_dict, abstract_params(component, config),
                                  component=component.name, hint=component.hint)
    return config, params
