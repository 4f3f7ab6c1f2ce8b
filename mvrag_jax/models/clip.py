"""The frozen CLIP towers of MV-RAG: the SD2.1 text encoder (prompt -> context tokens for the UNet) and the CLIP
ViT-H/14 vision tower (retrieved images -> penultimate hidden states for the resampler).

Semantics follow transformers' CLIPTextModel / CLIPVisionModel: pre-LN encoder layers (layer_norm1 -> self_attn ->
residual, layer_norm2 -> fc1 -> act -> fc2 -> residual), attention scale head_dim^-0.5, q/k/v/out projections with
bias. The text tower adds token + position embeddings, runs with a causal mask (no padding mask: the pipeline passes
none) and ends with final_layer_norm. The vision tower embeds [CLS; bias-free patch conv] + positions, applies
`pre_layrnorm` (sic, the official key), and pools CLS through post_layernorm.

Module names mirror the release keys once `normalize_*_keys` has stripped the older `text_model.` / `vision_model.`
prefixes (`encoder.layers.0.self_attn.q_proj.weight` -> `encoder/layers_0/self_attn/q_proj/kernel`); embedding tables
are nn.Embed, so their torch `weight` becomes `embedding`.
"""

import dataclasses
from typing import Any, Callable, Mapping, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from mvrag_jax.models.config import check_compute_dtype, config_block, square_size
from mvrag_jax.models.layers import attention, conv, dense, layer_norm
from mvrag_jax.sharding import ACT_EMBED, BATCH, EMBED, HEADS, LENGTH, MLP, NORM, VOCAB
from mvrag_jax.inputs.release import Release
from mvrag_jax.errors import MvragError


ACTIVATIONS = ("gelu", "quick_gelu", "gelu_new", "gelu_pytorch_tanh")
TEXT_FIELDS = ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
               "max_position_embeddings", "hidden_act", "layer_norm_eps")
VISION_FIELDS = ("hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads", "image_size",
                 "patch_size", "num_channels", "hidden_act", "layer_norm_eps")
# Key prefixes of checkpoints saved by transformers < 5 (the towers were wrapped in text_model / vision_model).
TEXT_PREFIX = "text_model."
VISION_PREFIX = "vision_model."
EMBED_INIT_STD = 0.02  # transformers' initializer_range; only matters for fresh (unconverted) params


class CLIPConfigError(MvragError, ValueError):
    """A CLIP config is missing, inconsistent or uses an unsupported option."""


def _check_sizes(config: Any, ints: tuple[str, ...]) -> None:
    """Shared validation of both configs (positive integer sizes, known activation and dtype, heads divide width)."""
    name = type(config).__name__
    bad = {f: getattr(config, f) for f in ints
           if not isinstance(getattr(config, f), (int, np.integer)) or getattr(config, f) < 1}
    if bad:
        raise CLIPConfigError(f"{name} sizes must be positive integers, got {bad}; fix the config")
    if config.hidden_act not in ACTIVATIONS:
        raise CLIPConfigError(f"{name}.hidden_act={config.hidden_act!r} is not supported; use one of {ACTIVATIONS}")
    check_compute_dtype(config.dtype, name, CLIPConfigError)
    if config.hidden_size % config.num_attention_heads:
        raise CLIPConfigError(f"{name}: hidden_size={config.hidden_size} is not divisible by num_attention_heads="
                              f"{config.num_attention_heads}; fix the config so heads split the width evenly")


def _release_block(release: "Release", component: str, nested_key: str) -> dict[str, Any]:
    """The tower's config.json; a full CLIPModel config (model_type 'clip') holds it under `nested_key`."""
    values = release.config(component)
    if values is None:
        raise CLIPConfigError(
            f"{release.folder(component)} has no config.json; the CLIP sizes (attention heads in particular) cannot "
            "be read from the weights alone: copy config.json from the official release")
    return dict(values.get(nested_key, values))


@jax.tree_util.register_static  # static under jit/eval_shape: `jax.eval_shape(init_text_params, config, rng)`
@dataclasses.dataclass(frozen=True)
class CLIPTextConfig:
    """Sizes of the text tower; field names are those of transformers' CLIPTextConfig (defaults = its defaults)."""

    vocab_size: int = 49408
    hidden_size: int = 512
    intermediate_size: int = 2048
    num_hidden_layers: int = 12
    num_attention_heads: int = 8
    max_position_embeddings: int = 77
    hidden_act: str = "quick_gelu"
    layer_norm_eps: float = 1e-5
    dtype: str = "float32"  # compute dtype: float32 | bfloat16 (params stay float32)

    def __post_init__(self):
        _check_sizes(self, TEXT_FIELDS[:6])

    @classmethod
    def from_config(cls, cfg: Any) -> "CLIPTextConfig":
        """From a full ConfigDict (configs/mvrag_sd21.py): sizes from cfg.model.clip_text, dtype from cfg.runtime."""
        return cls(**config_block(cfg, "clip_text", TEXT_FIELDS, CLIPConfigError), dtype=str(cfg.runtime.dtype))

    @classmethod
    def from_release(cls, release: "Release") -> "CLIPTextConfig":
        """From the release's text_encoder/config.json; absent fields take transformers' defaults, as it would."""
        return cls.from_dict(_release_block(release, "clip_text", "text_config"))

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> "CLIPTextConfig":
        """From a transformers CLIPTextConfig dict (a CLIPModel config.json's `text_config`); other keys ignored."""
        return cls(**{f: values[f] for f in TEXT_FIELDS if f in values})


@jax.tree_util.register_static
@dataclasses.dataclass(frozen=True)
class CLIPVisionConfig:
    """Sizes of the vision tower; field names are those of transformers' CLIPVisionConfig (defaults = its defaults)."""

    hidden_size: int = 768
    intermediate_size: int = 3072
    num_hidden_layers: int = 12
    num_attention_heads: int = 12
    image_size: int = 224
    patch_size: int = 32
    num_channels: int = 3
    hidden_act: str = "quick_gelu"
    layer_norm_eps: float = 1e-5
    dtype: str = "float32"
    # Patch-embedding stride; None = patch_size (non-overlapping patches, every CLIP release). The GUIE instance
    # retrieval model (eval/ir.py) overlaps its 14 px patches with stride 12, a 24 x 24 grid at 290 px.
    patch_stride: int | None = None

    def __post_init__(self):
        _check_sizes(self, VISION_FIELDS[:7])
        stride = self.stride
        if not isinstance(stride, (int, np.integer)) or not 1 <= stride <= self.patch_size:
            raise CLIPConfigError(f"CLIPVisionConfig: patch_stride={self.patch_stride} must be an integer in [1, "
                                  f"patch_size={self.patch_size}]")
        if stride == self.patch_size and self.image_size % self.patch_size:
            raise CLIPConfigError(f"CLIPVisionConfig: image_size={self.image_size} is not a multiple of patch_size="
                                  f"{self.patch_size}; the patch grid must tile the image")
        if self.image_size < self.patch_size or (self.image_size - self.patch_size) % stride:
            raise CLIPConfigError(f"CLIPVisionConfig: image_size={self.image_size} is not patch_size="
                                  f"{self.patch_size} + a multiple of the stride {stride}; the patch grid must tile "
                                  "the image")

    @property
    def stride(self) -> int:
        return self.patch_size if self.patch_stride is None else self.patch_stride

    @property
    def grid_size(self) -> int:
        """Patches per side: (image - kernel) / stride + 1 (= image / patch for non-overlapping patches)."""
        return (self.image_size - self.patch_size) // self.stride + 1

    @property
    def num_positions(self) -> int:
        """CLS + one position per patch."""
        return self.grid_size ** 2 + 1

    @classmethod
    def from_config(cls, cfg: Any) -> "CLIPVisionConfig":
        """From a full ConfigDict: sizes from cfg.model.clip_vision, dtype from cfg.runtime."""
        return cls(**config_block(cfg, "clip_vision", VISION_FIELDS, CLIPConfigError), dtype=str(cfg.runtime.dtype))

    @classmethod
    def from_release(cls, release: "Release") -> "CLIPVisionConfig":
        """From the release's image_encoder/config.json; absent fields take transformers' defaults."""
        return cls.from_dict(_release_block(release, "clip_vision", "vision_config"),
                             f"{release.folder('clip_vision')}/config.json")

    @classmethod
    def from_dict(cls, values: Mapping[str, Any], source: str = "config.json") -> "CLIPVisionConfig":
        """From a transformers CLIPVisionConfig dict (a CLIPModel config.json's `vision_config`); `source` names
        the file in errors."""
        values = dict(values)
        for field in ("image_size", "patch_size"):
            if field in values:
                values[field] = square_size(values[field], field, source, CLIPConfigError)
        return cls(**{f: values[f] for f in VISION_FIELDS if f in values})


def _normalize_keys(state_dict: Mapping[str, np.ndarray], prefix: str) -> dict[str, np.ndarray]:
    """Strip transformers-4 `prefix` and drop the `position_ids` buffers older checkpoints carry (not weights)."""
    return {key.removeprefix(prefix): value for key, value in state_dict.items()
            if not key.endswith("embeddings.position_ids")}


def normalize_text_keys(state_dict: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Official text_encoder keys (any transformers version) -> the keys our CLIPTextModel mirrors."""
    return _normalize_keys(state_dict, TEXT_PREFIX)


def normalize_vision_keys(state_dict: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Official image_encoder keys (any transformers version) -> the keys our CLIPVisionModel mirrors."""
    return _normalize_keys(state_dict, VISION_PREFIX)


def activation(name: str) -> Callable[[jax.Array], jax.Array]:
    """transformers' ACT2FN entries used by CLIP checkpoints."""
    if name == "gelu":  # SD2.1 / OpenCLIP ViT-H: exact erf GELU
        return lambda x: jax.nn.gelu(x, approximate=False)
    if name == "quick_gelu":  # OpenAI CLIP
        return lambda x: x * jax.nn.sigmoid(1.702 * x)
    if name in ("gelu_new", "gelu_pytorch_tanh"):
        return lambda x: jax.nn.gelu(x, approximate=True)
    raise CLIPConfigError(f"hidden_act={name!r} is not supported; use one of {ACTIVATIONS}")


def _embed(num: int, features: int, dtype: Any, name: str) -> nn.Embed:
    return nn.Embed(num, features, dtype=dtype, param_dtype=jnp.float32, name=name,
                    embedding_init=nn.with_logical_partitioning(nn.initializers.normal(EMBED_INIT_STD), (VOCAB, EMBED)))


class CLIPAttention(nn.Module):
    """Multi-head self-attention with biased q/k/v/out projections and scale head_dim^-0.5."""

    hidden_size: int
    num_heads: int
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, mask: jax.Array | None) -> jax.Array:
        project = lambda name: dense(self.hidden_size, (EMBED, HEADS), dtype=self.dtype, name=name)
        q, k, v = project("q_proj")(x), project("k_proj")(x), project("v_proj")(x)  # [b, l, hidden]
        out = attention(q, k, v, self.num_heads, mask=mask)  # default scale 1/sqrt(head_dim), as transformers
        return dense(self.hidden_size, (HEADS, EMBED), dtype=self.dtype, name="out_proj")(out)


class CLIPMLP(nn.Module):
    """fc1 -> activation -> fc2."""

    config: CLIPTextConfig | CLIPVisionConfig

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        cfg, dtype = self.config, jnp.dtype(self.config.dtype)
        h = dense(cfg.intermediate_size, (EMBED, MLP), dtype=dtype, name="fc1")(x)  # [b, l, intermediate]
        h = activation(cfg.hidden_act)(h)
        return dense(cfg.hidden_size, (MLP, EMBED), dtype=dtype, name="fc2")(h)  # [b, l, hidden]


class CLIPEncoderLayer(nn.Module):
    """Pre-LN transformer layer shared by both towers."""

    config: CLIPTextConfig | CLIPVisionConfig

    @nn.compact
    def __call__(self, x: jax.Array, mask: jax.Array | None) -> jax.Array:
        cfg, dtype = self.config, jnp.dtype(self.config.dtype)
        h = layer_norm(cfg.layer_norm_eps, dtype=dtype, name="layer_norm1")(x)
        x = x + CLIPAttention(cfg.hidden_size, cfg.num_attention_heads, dtype, name="self_attn")(h, mask)
        h = layer_norm(cfg.layer_norm_eps, dtype=dtype, name="layer_norm2")(x)
        h = CLIPMLP(cfg, name="mlp")(h)
        return nn.with_logical_constraint(x + h, (BATCH, LENGTH, ACT_EMBED))


class CLIPEncoder(nn.Module):
    """`num_hidden_layers` encoder layers; returns every hidden state (input first, last layer's output last)."""

    config: CLIPTextConfig | CLIPVisionConfig

    @nn.compact
    def __call__(self, x: jax.Array, mask: jax.Array | None = None) -> tuple[jax.Array, ...]:
        hidden_states = [x]
        for i in range(self.config.num_hidden_layers):
            hidden_states.append(CLIPEncoderLayer(self.config, name=f"layers_{i}")(hidden_states[-1], mask))
        return tuple(hidden_states)  # num_hidden_layers + 1 arrays [b, l, hidden]


class CLIPTextEmbeddings(nn.Module):
    config: CLIPTextConfig

    @nn.compact
    def __call__(self, input_ids: jax.Array) -> jax.Array:
        cfg, dtype = self.config, jnp.dtype(self.config.dtype)
        tokens = _embed(cfg.vocab_size, cfg.hidden_size, dtype, "token_embedding")(input_ids)  # [b, l, hidden]
        positions = _embed(cfg.max_position_embeddings, cfg.hidden_size, dtype, "position_embedding")(
            jnp.arange(input_ids.shape[-1]))  # [l, hidden]
        return tokens + positions[None]


class CLIPTextModel(nn.Module):
    """input_ids [b, l] (l <= max_position_embeddings) -> last hidden state after final_layer_norm [b, l, hidden]."""

    config: CLIPTextConfig

    @nn.compact
    def __call__(self, input_ids: jax.Array) -> jax.Array:
        cfg, dtype = self.config, jnp.dtype(self.config.dtype)
        length = input_ids.shape[-1]
        if length > cfg.max_position_embeddings:
            raise CLIPConfigError(f"input_ids have {length} tokens but the text encoder has "
                                  f"{cfg.max_position_embeddings} positions; tokenize with truncation to that length")
        x = CLIPTextEmbeddings(cfg, name="embeddings")(input_ids)  # [b, l, hidden]
        x = nn.with_logical_constraint(x, (BATCH, LENGTH, ACT_EMBED))
        causal = jnp.tril(jnp.ones((length, length), jnp.bool_))[None, None]  # [1, 1, l, l]: token i sees j <= i
        x = CLIPEncoder(cfg, name="encoder")(x, causal)[-1]
        return layer_norm(cfg.layer_norm_eps, dtype=dtype, name="final_layer_norm")(x)


class CLIPVisionOutput(NamedTuple):
    last_hidden_state: jax.Array        # [b, 1 + patches, hidden] last layer output (no post_layernorm)
    pooler_output: jax.Array            # [b, hidden] post_layernorm(CLS)
    hidden_states: tuple[jax.Array, ...]  # num_hidden_layers + 1 arrays; [0] = embeddings after pre_layrnorm


class CLIPVisionEmbeddings(nn.Module):
    config: CLIPVisionConfig

    @nn.compact
    def __call__(self, pixel_values: jax.Array) -> jax.Array:
        cfg, dtype = self.config, jnp.dtype(self.config.dtype)
        class_embedding = self.param("class_embedding", nn.with_logical_partitioning(
            nn.initializers.normal(1.0), (NORM,)), (cfg.hidden_size,), jnp.float32)
        patches = conv(cfg.hidden_size, cfg.patch_size, stride=cfg.stride, padding=0, use_bias=False, dtype=dtype,
                       name="patch_embedding")(pixel_values)  # [b, grid, grid, hidden]
        patches = patches.reshape(patches.shape[0], -1, cfg.hidden_size)  # [b, grid * grid, hidden], row-major
        cls = jnp.broadcast_to(class_embedding.astype(dtype), (patches.shape[0], 1, cfg.hidden_size))
        x = jnp.concatenate([cls, patches], axis=1)  # [b, 1 + grid * grid, hidden]
        positions = _embed(cfg.num_positions, cfg.hidden_size, dtype, "position_embedding")(
            jnp.arange(cfg.num_positions))
        return x + positions[None]


class CLIPVisionModel(nn.Module):
    """pixel_values [b, image_size, image_size, num_channels] (NHWC, normalised) -> CLIPVisionOutput."""

    config: CLIPVisionConfig

    @nn.compact
    def __call__(self, pixel_values: jax.Array) -> CLIPVisionOutput:
        cfg, dtype = self.config, jnp.dtype(self.config.dtype)
        expected = (cfg.image_size, cfg.image_size, cfg.num_channels)
        if tuple(pixel_values.shape[1:]) != expected:
            raise CLIPConfigError(f"pixel_values have shape {tuple(pixel_values.shape)}, the vision tower expects "
                                  f"[b, {', '.join(map(str, expected))}] (NHWC); preprocess with "
                                  "mvrag_jax.inputs.images.clip_preprocess (NCHW arrays need a transpose)")
        x = CLIPVisionEmbeddings(cfg, name="embeddings")(pixel_values)  # [b, 1 + patches, hidden]
        x = layer_norm(cfg.layer_norm_eps, dtype=dtype, name="pre_layrnorm")(x)
        x = nn.with_logical_constraint(x, (BATCH, LENGTH, ACT_EMBED))
        hidden_states = CLIPEncoder(cfg, name="encoder")(x)
        last = hidden_states[-1]
        pooled = layer_norm(cfg.layer_norm_eps, dtype=dtype, name="post_layernorm")(last[:, 0])  # [b, hidden]
        return CLIPVisionOutput(last, pooled, hidden_states)


def init_text_params(config: CLIPTextConfig, rng: jax.Array) -> Any:
    """The (logically boxed) `params` of a fresh text tower; pure, so it works under jax.eval_shape."""
    dummy = jnp.zeros((1, config.max_position_embeddings), jnp.int32)
    return CLIPTextModel(config).init(rng, dummy)["params"]


def init_vision_params(config: CLIPVisionConfig, rng: jax.Array) -> Any:
    """The (logically boxed) `params` of a fresh vision tower; pure, so it works under jax.eval_shape."""
    dummy = jnp.zeros((1, config.image_size, config.image_size, config.num_channels), jnp.float32)
    return CLIPVisionModel(config).init(rng, dummy)["params"]


def encode_text(config: CLIPTextConfig, params: Any, input_ids: jax.Array) -> jax.Array:
    """Text embeddings [b, l, hidden] (final-layer-normed last hidden state) of token ids [b, l]."""
    return CLIPTextModel(config).apply({"params": params}, input_ids)


def encode_images(config: CLIPVisionConfig, params: Any, pixel_values: jax.Array) -> CLIPVisionOutput:
    """Every output of the vision tower for normalised NHWC pixels [b, s, s, c]."""
    return CLIPVisionModel(config).apply({"params": params}, pixel_values)


def image_features(config: CLIPVisionConfig, params: Any, pixel_values: jax.Array) -> jax.Array:
    """hidden_states[-2] [b, 1 + patches, hidden]: what the MV-RAG pipeline feeds the resampler (under jit the unused
    last layer is dead code and is not computed)."""
    return encode_images(config, params, pixel_values).hidden_states[-2]
