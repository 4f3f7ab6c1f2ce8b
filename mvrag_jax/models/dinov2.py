"""The frozen DINOv2 encoder of the fusion weight (HF `Dinov2Model`, facebook/dinov2-base) and its image processor.

Module names mirror the hub keys (`encoder.layer.3.attention.attention.query.weight` ->
`encoder/layer_3/attention/attention/query/kernel`). The patch position embeddings are resized to the input's patch
grid with torch's `F.interpolate(mode="bicubic", align_corners=False)` in float32 (cubic convolution a = -0.75,
replicated borders), written out here: `jax.image.resize` uses another kernel and would miss parity.

The processor is transformers' BitImageProcessor with the PIL backend (what the official requirements' transformers
4.46 ran). BitImageProcessorPil and CLIPImageProcessorPil are the same PilBackend pipeline with the same class
defaults (PIL bicubic shortest-edge resize, center crop, float64 rescale, float32 normalise), so the settings and the
pipeline come from mvrag_jax/inputs/images.py; only the file they are read from differs.

    config, processor = DINOv2Config.from_release(release), processor_config(release)
    embeddings = embed_images(config, params, processor, pil_images)   # [n, hidden] L2-normalised CLS
"""

import dataclasses
from typing import Any, Mapping, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from mvrag_jax.inputs import images
from mvrag_jax.models.config import check_compute_dtype, config_block, square_size
from mvrag_jax.models.layers import attention, conv, dense, layer_norm
from mvrag_jax.sharding import ACT_EMBED, BATCH, EMBED, HEADS, LENGTH, MLP, NORM
from mvrag_jax.inputs.release import Release
from mvrag_jax.errors import MvragError


SIZE_FIELDS = ("hidden_size", "num_hidden_layers", "num_attention_heads", "mlp_ratio", "patch_size", "image_size",
               "num_channels", "layer_norm_eps", "layerscale_value", "hidden_act", "qkv_bias", "use_mask_token")
# transformers' Dinov2Config defaults: what the official loader uses for a key its config.json leaves out.
_HF_MODEL_DEFAULTS = {"hidden_size": 768, "num_hidden_layers": 12, "num_attention_heads": 12, "mlp_ratio": 4,
                      "patch_size": 14, "image_size": 224, "num_channels": 3, "layer_norm_eps": 1e-6,
                      "layerscale_value": 1.0, "hidden_act": "gelu", "qkv_bias": True, "use_mask_token": True}
BICUBIC_A = -0.75  # torch's cubic convolution coefficient (upsample_bicubic2d)


class DINOv2ConfigError(MvragError, ValueError):
    """A DINOv2 model or processor config is missing, inconsistent, or asks for an option this port lacks."""


@jax.tree_util.register_static  # hashable and leaf-free: pass it straight through jit / eval_shape
@dataclasses.dataclass(frozen=True)
class DINOv2Config:
    """Sizes of Dinov2Model; defaults are facebook/dinov2-base (86,580,480 parameters)."""

    hidden_size: int = 768
    num_hidden_layers: int = 12
    num_attention_heads: int = 12
    mlp_ratio: float = 4
    patch_size: int = 14
    image_size: int = 518       # training size: sets the position-embedding grid (37 x 37 for dinov2-base)
    num_channels: int = 3
    layer_norm_eps: float = 1e-6
    layerscale_value: float = 1.0
    hidden_act: str = "gelu"
    qkv_bias: bool = True
    use_mask_token: bool = True  # the release has embeddings.mask_token; kept for key parity, unused at inference
    dtype: str = "float32"       # compute dtype: float32 | bfloat16 (params stay float32)

    def __post_init__(self):
        check_compute_dtype(self.dtype, "dinov2", DINOv2ConfigError)
        if self.hidden_act != "gelu":
            raise DINOv2ConfigError(f"dinov2 hidden_act={self.hidden_act!r}; only 'gelu' (exact erf, dinov2-base) "
                                    "is implemented")
        if self.hidden_size % self.num_attention_heads:
            raise DINOv2ConfigError(f"dinov2 hidden_size={self.hidden_size} is not divisible by num_attention_heads="
                                    f"{self.num_attention_heads}; fix the config")

    @property
    def mlp_width(self) -> int:
        return int(self.hidden_size * self.mlp_ratio)  # transformers: int(hidden_size * mlp_ratio)

    @property
    def position_grid(self) -> int:
        """Side of the learned position-embedding grid (image_size // patch_size)."""
        return self.image_size // self.patch_size

    @classmethod
    def from_config(cls, cfg: Any) -> "DINOv2Config":
        """From a full ConfigDict (configs/mvrag_sd21.py): sizes from cfg.model.dinov2, dtype from cfg.runtime."""
        return cls(**config_block(cfg, "dinov2", SIZE_FIELDS, DINOv2ConfigError), dtype=str(cfg.runtime.dtype))

    @classmethod
    def from_release(cls, release: "Release") -> "DINOv2Config":
        """Sizes from the release's facebook/dinov2-base/config.json (the hub id the official f_score.py loads)."""
        raw = release.config("dinov2")
        where = f"{release.folder('dinov2')}/config.json"
        if raw is None:
            raise DINOv2ConfigError(f"{where} is missing; copy config.json of facebook/dinov2-base into that folder")
        return cls.from_hf_config(raw, where)

    @classmethod
    def from_hf_config(cls, raw: Mapping[str, Any], where: str = "dinov2 config") -> "DINOv2Config":
        if raw.get("use_swiglu_ffn", False):
            raise DINOv2ConfigError(f"{where}: use_swiglu_ffn=true (the giant DINOv2); only the MLP feed-forward of "
                                    "dinov2-small/base/large is implemented")
        values = {name: raw.get(name, default) for name, default in _HF_MODEL_DEFAULTS.items()}
        values["image_size"] = square_size(values["image_size"], "image_size", where, DINOv2ConfigError)
        values["patch_size"] = square_size(values["patch_size"], "patch_size", where, DINOv2ConfigError)
        return cls(**values)


def processor_config(release: "Release") -> images.CLIPImageProcessorConfig:
    """The BitImageProcessor settings of the release's facebook/dinov2-base/preprocessor_config.json (keys it leaves
    out take the shared transformers defaults)."""
    values = release.config("dinov2", images.PREPROCESSOR_FILE)
    if values is None:
        raise DINOv2ConfigError(f"{release.folder('dinov2')}/{images.PREPROCESSOR_FILE} is missing; copy "
                                "preprocessor_config.json of facebook/dinov2-base into that folder")
    return images.CLIPImageProcessorConfig.from_dict(values)


def preprocess(pictures: Sequence[Any], processor: images.CLIPImageProcessorConfig) -> np.ndarray:
    """PIL images or uint8 [h, w, 3] arrays -> pixel values [n, crop_h, crop_w, 3] float32 (NHWC)."""
    if len(pictures) == 0:
        raise images.ImageError("DINOv2 preprocess got no images; pass at least one PIL image or uint8 array")
    return images.clip_preprocess(pictures, processor)


# ---- position-embedding interpolation ------------------------------------------------------------------------------
def bicubic_weights(in_size: int, out_size: int) -> np.ndarray:
    """[out_size, in_size] float32 matrix of torch's bicubic resize along one axis (align_corners=False).

    Source coordinate (i + 0.5) * in/out - 0.5 in float32, taps floor(src) - 1 .. floor(src) + 2 clamped to the
    border (replicate), cubic-convolution weights with a = -0.75, all as torch's CPU kernel computes them.
    """
    a = np.float32(BICUBIC_A)
    scale = np.float32(in_size) / np.float32(out_size)
    src = scale * (np.arange(out_size, dtype=np.float32) + np.float32(0.5)) - np.float32(0.5)
    base = np.floor(src)
    t = (src - base).astype(np.float32)
    near = lambda x: ((a + 2) * x - (a + 3)) * x * x + 1            # |x| <= 1
    far = lambda x: ((a * x - 5 * a) * x + 8 * a) * x - 4 * a       # 1 < |x| < 2
    taps = np.stack([far(t + 1), near(t), near(1 - t), far(2 - t)], axis=1).astype(np.float32)  # [out, 4]
    weights = np.zeros((out_size, in_size), np.float32)
    for j in range(4):
        index = np.clip(base.astype(np.int64) - 1 + j, 0, in_size - 1)
        np.add.at(weights, (np.arange(out_size), index), taps[:, j])
    return weights


def interpolate_position_grid(grid: jax.Array, out_h: int, out_w: int) -> jax.Array:
    """Bicubic resize of a [h, w, d] embedding grid to [out_h, out_w, d] (torch F.interpolate semantics, float32)."""
    h, w, _ = grid.shape
    if (h, w) == (out_h, out_w):
        return grid  # torch returns the table unchanged too (and the weights would be the identity)
    rows, cols = jnp.asarray(bicubic_weights(h, out_h)), jnp.asarray(bicubic_weights(w, out_w))
    highest = jax.lax.Precision.HIGHEST  # a one-off tiny product: keep it exact on TPU/GPU as well
    grid = jnp.einsum("xw,hwd->hxd", cols, grid.astype(jnp.float32), precision=highest)     # [h, out_w, d]
    return jnp.einsum("yh,hxd->yxd", rows, grid, precision=highest)                          # [out_h, out_w, d]


# ---- model ---------------------------------------------------------------------------------------------------------
class PatchEmbeddings(nn.Module):
    hidden_size: int
    patch_size: int
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, pixels: jax.Array) -> jax.Array:
        # Non-overlapping p x p patches; rows/columns beyond a multiple of p are dropped, as torch's conv does.
        return conv(self.hidden_size, self.patch_size, stride=self.patch_size, padding=0, dtype=self.dtype,
                    name="projection")(pixels)                                   # [b, H/p, W/p, d]


class Embeddings(nn.Module):
    """[CLS; patches] + position embeddings resized to the input's patch grid."""

    config: DINOv2Config

    @nn.compact
    def __call__(self, pixels: jax.Array) -> jax.Array:
        cfg, d = self.config, self.config.hidden_size
        init = lambda axes, fn: nn.with_logical_partitioning(fn, axes)
        cls_token = self.param("cls_token", init((None, None, EMBED), nn.initializers.normal(0.02)), (1, 1, d))
        if cfg.use_mask_token:  # only used by masked-image pre-training; declared so the release key has a home
            self.param("mask_token", init((None, EMBED), nn.initializers.zeros_init()), (1, d))
        grid = cfg.position_grid
        position = self.param("position_embeddings", init((None, None, EMBED), nn.initializers.normal(0.02)),
                              (1, grid * grid + 1, d))
        patches = PatchEmbeddings(d, cfg.patch_size, jnp.dtype(cfg.dtype), name="patch_embeddings")(pixels)
        b, out_h, out_w, _ = patches.shape
        patches = patches.reshape(b, out_h * out_w, d)                           # [b, n, d]
        patch_position = interpolate_position_grid(position[0, 1:].reshape(grid, grid, d), out_h, out_w)
        position = jnp.concatenate([position[0, :1], patch_position.reshape(out_h * out_w, d)])  # [1 + n, d]
        tokens = jnp.concatenate([jnp.broadcast_to(cls_token, (b, 1, d)).astype(patches.dtype), patches], axis=1)
        return tokens + position.astype(tokens.dtype)                            # [b, 1 + n, d]


class SelfAttention(nn.Module):
    """query/key/value projections (named as the hub's `attention.attention`)."""

    hidden_size: int
    qkv_bias: bool
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
        project = lambda name: dense(self.hidden_size, (EMBED, HEADS), use_bias=self.qkv_bias, dtype=self.dtype,
                                     name=name)(x)
        return project("query"), project("key"), project("value")


class SelfOutput(nn.Module):
    hidden_size: int
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        return dense(self.hidden_size, (HEADS, EMBED), dtype=self.dtype, name="dense")(x)


class Attention(nn.Module):
    config: DINOv2Config

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        cfg, dtype = self.config, jnp.dtype(self.config.dtype)
        q, k, v = SelfAttention(cfg.hidden_size, cfg.qkv_bias, dtype, name="attention")(x)   # [b, l, d] each
        out = attention(q, k, v, cfg.num_attention_heads)                                     # 1/sqrt(head_dim)
        return SelfOutput(cfg.hidden_size, dtype, name="output")(out)


class LayerScale(nn.Module):
    init_value: float

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        lambda1 = self.param("lambda1", nn.with_logical_partitioning(nn.initializers.constant(self.init_value),
                                                                    (NORM,)), (x.shape[-1],), jnp.float32)
        return x * lambda1.astype(x.dtype)


class FeedForward(nn.Module):
    config: DINOv2Config

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        cfg, dtype = self.config, jnp.dtype(self.config.dtype)
        x = dense(cfg.mlp_width, (EMBED, MLP), dtype=dtype, name="fc1")(x)                   # [b, l, mlp]
        x = nn.gelu(x, approximate=False)                                                     # ACT2FN["gelu"] is erf
        return dense(cfg.hidden_size, (MLP, EMBED), dtype=dtype, name="fc2")(x)


class Layer(nn.Module):
    """Pre-LN block with layer scale on both residual branches."""

    config: DINOv2Config

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        cfg, dtype = self.config, jnp.dtype(self.config.dtype)
        h = layer_norm(cfg.layer_norm_eps, dtype=dtype, name="norm1")(x)
        x = x + LayerScale(cfg.layerscale_value, name="layer_scale1")(Attention(cfg, name="attention")(h))
        h = layer_norm(cfg.layer_norm_eps, dtype=dtype, name="norm2")(x)
        x = x + LayerScale(cfg.layerscale_value, name="layer_scale2")(FeedForward(cfg, name="mlp")(h))
        return nn.with_logical_constraint(x, (BATCH, LENGTH, ACT_EMBED))


class Encoder(nn.Module):
    config: DINOv2Config

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        for i in range(self.config.num_hidden_layers):
            x = Layer(self.config, name=f"layer_{i}")(x)
        return x


class Dinov2Model(nn.Module):
    """pixel values [b, H, W, c] (processor output, NHWC) -> last_hidden_state [b, 1 + (H/p)(W/p), d]."""

    config: DINOv2Config

    @nn.compact
    def __call__(self, pixels: jax.Array) -> jax.Array:
        cfg = self.config
        x = Embeddings(cfg, name="embeddings")(pixels.astype(jnp.dtype(cfg.dtype)))
        x = Encoder(cfg, name="encoder")(x)
        x = layer_norm(cfg.layer_norm_eps, dtype=jnp.dtype(cfg.dtype), name="layernorm")(x)
        return x.astype(jnp.float32)


def init_params(config: DINOv2Config, rng: jax.Array) -> Any:
    """The (logically boxed) `params` collection of a fresh DINOv2; pure, so it works under jax.eval_shape."""
    side = config.patch_size * config.position_grid
    dummy = jnp.zeros((1, side, side, config.num_channels), jnp.float32)
    return Dinov2Model(config).init(rng, dummy)["params"]


@jax.jit  # config is a static pytree: one compilation per config and input shape
def last_hidden_state(config: DINOv2Config, params: Any, pixels: jax.Array) -> jax.Array:
    """[b, 1 + n, d] after the final layernorm, for pixel values [b, H, W, c] (NHWC)."""
    return Dinov2Model(config).apply({"params": params}, pixels)


def l2_normalize(x: jax.Array) -> jax.Array:
    """x / ||x|| along the last axis, as f_score.get_embeddings does (no epsilon)."""
    return x / jnp.linalg.norm(x, axis=-1, keepdims=True)


@jax.jit
def cls_embeddings(config: DINOv2Config, params: Any, pixels: jax.Array) -> jax.Array:
    """L2-normalised CLS tokens [b, d] of pixel values [b, H, W, c]: the official SimilarityModel embedding."""
    return l2_normalize(last_hidden_state(config, params, pixels)[:, 0])


def embed_images(config: DINOv2Config, params: Any, processor: images.CLIPImageProcessorConfig,
                 pictures: Sequence[Any]) -> jax.Array:
    """L2-normalised CLS embeddings [n, d] of PIL images or uint8 [h, w, 3] arrays (processor, then the model)."""
    return cls_embeddings(config, params, jnp.asarray(preprocess(pictures, processor)))


# transformers 5 renames the attention projections in memory (and back on save_pretrained); a raw `state_dict()`
# dump carries the in-memory names, so accept them too.
_IN_MEMORY_NAMES = {"attention.q_proj.": "attention.attention.query.", "attention.k_proj.": "attention.attention.key.",
                    "attention.v_proj.": "attention.attention.value.", "attention.o_proj.": "attention.output.dense."}


def normalize_keys(state_dict: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Release DINOv2 state dict -> hub key names (`q_proj/k_proj/v_proj/o_proj` -> `attention.attention.query/...`,
    `attention.output.dense`)."""
    normalized = {}
    for key, array in state_dict.items():
        for in_memory, hub in _IN_MEMORY_NAMES.items():
            if f".{in_memory}" in f".{key}":
                key = key.replace(in_memory, hub)
                break
        if key in normalized:
            raise DINOv2ConfigError(f"dinov2 state dict has both the hub and the in-memory name of {key}; keep one")
        normalized[key] = array
    return normalized
