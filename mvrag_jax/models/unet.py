"""The MV-RAG multiview UNet (official modules/mv_unet.py MultiViewUNetModel), NHWC, param paths = release keys.

    config = UNetConfig.from_config(get_config("size=tiny"))      # or UNetConfig.from_release(Release.open(dir))
    params = init_params(config, jax.random.key(0))
    eps = MultiViewUNet(config).apply({"params": params}, x, timesteps, context, camera, image_tokens, scale)

Rows of every batched input are [object * views]: row = b * num_frames + view. Blocks are grouped exactly as the
release (`input_blocks_N_M`, `middle_block_N`, `output_blocks_N_M`), and each block is one remat unit when
`config.remat` asks for it (`nn.remat`, or models/remat.py's `ordered_remat` for "ordered").
"""

import dataclasses
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from mvrag_jax.models import layers
from mvrag_jax.models.attention import NORM_GROUPS, FusionWeights, SpatialTransformer3D
from mvrag_jax.models.attention_kernels import check_kernel
from mvrag_jax.models.embeddings import timestep_embedding
from mvrag_jax.models.remat import ordered_remat
from mvrag_jax.sharding import ACT_EMBED, BATCH, CONV_OUT, EMBED, MLP
from mvrag_jax.inputs.release import Release
from mvrag_jax.errors import MvragError


Dtype = Any

RESBLOCK_NORM_EPS = 1e-5   # nn.GroupNorm(32, C) default, ResBlock norms and the final `out_0`
CONTEXT_LENGTH = 77        # CLIP text tokens; only used to build dummy inputs (param shapes do not depend on it)
DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}
# "ordered": like "full", but a block is recomputed only once its output gradient exists (models/remat.py).
REMAT_POLICIES = {"none": None, "full": None, "ordered": None, "dots_saveable": jax.checkpoint_policies.dots_saveable}
ACT_NHWC = (BATCH, None, None, ACT_EMBED)  # block-boundary activations [b * views, h, w, c]

# Official constructor options we implement only at their default; any other value in a release config is an error.
_FIXED_OPTIONS = {"dims": 2, "conv_resample": True, "use_scale_shift_norm": False, "resblock_updown": False,
                  "num_classes": None, "n_embed": None, "num_attention_blocks": None, "adm_in_channels": None,
                  "dropout": 0}
_REQUIRED_KEYS = ("image_size", "in_channels", "out_channels", "model_channels", "num_res_blocks",
                  "attention_resolutions", "context_dim")


class UNetConfigError(MvragError, ValueError):
    """A UNet config value is inconsistent or not supported."""


@jax.tree_util.register_static  # hashable and leaf-free: pass it straight through jit / eval_shape
@dataclasses.dataclass(frozen=True)
class UNetConfig:
    image_size: int                      # latent side (informational; the model works at any divisible size)
    in_channels: int
    out_channels: int
    model_channels: int
    num_res_blocks: int | tuple[int, ...]  # per level, or one int for all levels
    attention_resolutions: tuple[int, ...]  # downsample rates (1, 2, 4, ...) that get a SpatialTransformer3D
    channel_mult: tuple[int, ...]
    num_head_channels: int = -1          # channels per head; -1: use num_heads
    context_dim: int = 1024
    camera_dim: int | None = None
    transformer_depth: int = 1
    num_frames: int = 4                  # views per object (not in the release config)
    dtype: str = "float32"               # compute dtype of activations; params stay float32
    remat: str = "none"                  # none | full | ordered | dots_saveable (remat per UNet block)
    num_heads: int = -1                  # heads per attention layer when num_head_channels is -1
    image_branch: bool = True            # attn2 has to_k_ip/to_v_ip (MV-RAG); False: an MVDream-style text-only base
    attention: str = "auto"              # runtime.attention kernel (models/attention_kernels.py KERNELS)

    def __post_init__(self):
        # JSON gives lists; tuples keep the config hashable (it is a static jit argument).
        for name in ("attention_resolutions", "channel_mult", "num_res_blocks"):
            value = getattr(self, name)
            if isinstance(value, list):
                object.__setattr__(self, name, tuple(value))
        if self.dtype not in DTYPES:
            raise UNetConfigError(f"unet dtype={self.dtype!r}; set runtime.dtype to one of {sorted(DTYPES)}")
        if self.remat not in REMAT_POLICIES:
            raise UNetConfigError(f"unet remat={self.remat!r}; set runtime.remat to one of {sorted(REMAT_POLICIES)}")
        check_kernel(self.attention, "unet", UNetConfigError)
        if self.num_heads == -1 and self.num_head_channels == -1:
            raise UNetConfigError("unet config sets neither num_heads nor num_head_channels; set one of them")
        if isinstance(self.num_res_blocks, tuple) and len(self.num_res_blocks) != len(self.channel_mult):
            raise UNetConfigError(f"num_res_blocks={self.num_res_blocks} needs one entry per level of "
                                  f"channel_mult={self.channel_mult}; give {len(self.channel_mult)} values or one int")
        if self.num_frames < 1:
            raise UNetConfigError(f"num_frames={self.num_frames}; it must be >= 1")
        last_level = len(self.channel_mult) - 1
        for level, mult in enumerate(self.channel_mult):
            channels = mult * self.model_channels
            if channels % NORM_GROUPS:
                raise UNetConfigError(f"level width {channels} (model_channels {self.model_channels} x {mult}) is not "
                                      f"divisible by the {NORM_GROUPS} GroupNorm groups; change model_channels")
            if 2 ** level not in self.attention_resolutions and level != last_level:  # the middle block attends
                continue
            heads, dim_head = self.heads(channels)
            if heads * dim_head != channels:
                raise UNetConfigError(f"attention width {heads}x{dim_head} != channels {channels}: num_head_channels "
                                      f"{self.num_head_channels} / num_heads {self.num_heads} must divide {channels}")

    @classmethod
    def from_release(cls, release: "Release", num_frames: int = 4, dtype: str = "float32",
                     remat: str = "none", attention: str = "auto") -> "UNetConfig":
        """Sizes from the release's unet/config.json (the kwargs of the official MultiViewUNetModel)."""
        values = release.config("unet")
        if values is None:
            raise UNetConfigError(f"{release.folder('unet')} has no config.json; copy it from the official release")
        # The config does not say whether the decoupled image attention exists; the weights do (header read only).
        # A release with a resampler/ is MV-RAG: its UNet must have the branch (missing to_k_ip keys then fail the
        # conversion with the "base MVDream UNet?" hint). A folder without weights is taken as MV-RAG too.
        weights = sorted(release.folder("unet").glob("*.safetensors"))
        image_branch = (not weights or release.has("resampler")
                        or any(".to_k_ip." in key for key in release.shapes("unet")))
        return cls.from_kwargs(values, image_branch, where=f"{release.folder('unet')}/config.json",
                               num_frames=num_frames, dtype=dtype, remat=remat, attention=attention)

    @classmethod
    def from_kwargs(cls, values: dict, image_branch: bool, where: str = "unet config", num_frames: int = 4,
                    dtype: str = "float32", remat: str = "none", attention: str = "auto") -> "UNetConfig":
        """From the kwargs of the official MultiViewUNetModel (MV-RAG's unet/config.json, or the `unet_config.params`
        of an MVDream/ImageDream YAML); `where` names their file in errors."""
        missing = [key for key in _REQUIRED_KEYS if key not in values]
        if missing:
            raise UNetConfigError(f"{where} lacks {missing}; restore it from the official release")
        for key, default in _FIXED_OPTIONS.items():
            if values.get(key, default) != default:
                raise UNetConfigError(f"{where} sets {key}={values[key]!r}; mvrag-jax implements only "
                                      f"{key}={default!r} (the MV-RAG release value)")
        # Our runtime choices and the weight-derived image_branch are never read from a release config.
        fields = {f.name for f in dataclasses.fields(cls)} - {"image_branch", "num_frames", "dtype", "remat",
                                                              "attention"}
        # The official constructor swallows unknown kwargs (**kwargs), so unknown keys are ignored here too.
        known = {key: value for key, value in values.items() if key in fields}
        if "channel_mult" not in known:
            known["channel_mult"] = (1, 2, 4, 8)  # official default
        return cls(**known, num_frames=num_frames, dtype=dtype, remat=remat, image_branch=image_branch,
                   attention=attention)

    @classmethod
    def from_config(cls, cfg) -> "UNetConfig":
        """From an experiment config (configs/*.py): cfg.model.unet, cfg.model.num_frames and cfg.runtime."""
        unet = dict(cfg.model.unet)
        unknown = sorted(set(unet) - {f.name for f in dataclasses.fields(cls)})
        if unknown:
            raise UNetConfigError(f"config.model.unet has unknown keys {unknown}; known: "
                                  f"{', '.join(f.name for f in dataclasses.fields(cls))}")
        return cls(**unet, num_frames=cfg.model.num_frames, dtype=cfg.runtime.dtype, remat=cfg.runtime.remat,
                   attention=cfg.runtime.attention)

    @property
    def compute_dtype(self) -> Dtype:
        return DTYPES[self.dtype]

    def res_blocks(self, level: int) -> int:
        return self.num_res_blocks if isinstance(self.num_res_blocks, int) else self.num_res_blocks[level]

    def heads(self, channels: int) -> tuple[int, int]:
        """(heads, dim_head) of an attention layer at width `channels` (official -1 conventions)."""
        if self.num_head_channels == -1:
            return self.num_heads, channels // self.num_heads
        return channels // self.num_head_channels, self.num_head_channels


class ResBlock(nn.Module):
    """GN -> SiLU -> conv3x3, + Linear(SiLU(emb)), GN -> SiLU -> conv3x3, + skip (1x1 conv when widths differ)."""
    out_channels: int
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, emb: jax.Array) -> jax.Array:
        norm = lambda name: layers.group_norm(NORM_GROUPS, RESBLOCK_NORM_EPS, dtype=self.dtype, name=name)
        h = layers.conv(self.out_channels, 3, dtype=self.dtype, name="in_layers_2")(nn.silu(norm("in_layers_0")(x)))
        emb_out = layers.dense(self.out_channels, (EMBED, CONV_OUT), dtype=self.dtype, name="emb_layers_1")(
            nn.silu(emb))  # [b * views, c_out]
        h = h + emb_out[:, None, None, :].astype(h.dtype)  # no scale-shift norm in the release
        h = layers.conv(self.out_channels, 3, dtype=self.dtype, name="out_layers_3")(nn.silu(norm("out_layers_0")(h)))
        skip = x if x.shape[-1] == self.out_channels else layers.conv(
            self.out_channels, 1, dtype=self.dtype, name="skip_connection")(x)
        return skip + h


class Downsample(nn.Module):
    """conv3x3 stride 2, padding 1 (`op`)."""
    channels: int
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        return layers.conv(self.channels, 3, stride=2, padding=1, dtype=self.dtype, name="op")(x)  # [n, h/2, w/2, c]


class Upsample(nn.Module):
    """Nearest x2, then conv3x3 (`conv`)."""
    channels: int
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        x = jnp.repeat(jnp.repeat(x, 2, axis=1), 2, axis=2)  # [n, 2h, 2w, c]
        return layers.conv(self.channels, 3, dtype=self.dtype, name="conv")(x)


class MultiViewUNet(nn.Module):
    """eps = UNet(x [b*F, h, w, in], timesteps [b*F], context [b*F, L, ctx], camera [b*F, 16] | None,
    image_tokens [b*F, n, ctx] | None, scale: scalar or [b*F]) -> [b*F, h, w, out] in x's dtype.
    F = config.num_frames (static). `scale` is the official fusion scale s (text x s, image x (1.5 - s)), or
    attention.FusionWeights giving both weights (training: FusionWeights.training(l), the paper's l * txt + ret)."""
    config: UNetConfig

    def setup(self):
        c, dtype = self.config, self.config.compute_dtype
        emb_dim = 4 * c.model_channels
        self.time_embed_0 = layers.dense(emb_dim, (EMBED, MLP), dtype=dtype)
        self.time_embed_2 = layers.dense(emb_dim, (MLP, EMBED), dtype=dtype)
        if c.camera_dim is not None:
            self.camera_embed_0 = layers.dense(emb_dim, (EMBED, MLP), dtype=dtype)
            self.camera_embed_2 = layers.dense(emb_dim, (MLP, EMBED), dtype=dtype)

        def transformer(channels: int) -> SpatialTransformer3D:
            heads, dim_head = c.heads(channels)
            return SpatialTransformer3D(channels, heads, dim_head, c.num_frames, c.transformer_depth, ip=c.image_branch,
                                        dtype=dtype, attention_kernel=c.attention)

        # Nested lists: flax names block i, layer j `input_blocks_i_j`, exactly the release's `input_blocks.i.j`.
        input_blocks = [[layers.conv(c.model_channels, 3, dtype=dtype)]]
        skip_channels, channels, rate = [c.model_channels], c.model_channels, 1
        last_level = len(c.channel_mult) - 1
        for level, mult in enumerate(c.channel_mult):
            for _ in range(c.res_blocks(level)):
                channels = mult * c.model_channels
                block = [ResBlock(channels, dtype=dtype)]
                if rate in c.attention_resolutions:
                    block.append(transformer(channels))
                input_blocks.append(block)
                skip_channels.append(channels)
            if level != last_level:
                input_blocks.append([Downsample(channels, dtype=dtype)])
                skip_channels.append(channels)
                rate *= 2
        self.input_blocks = input_blocks
        self.middle_block = [ResBlock(channels, dtype=dtype), transformer(channels), ResBlock(channels, dtype=dtype)]
        output_blocks = []
        for level, mult in reversed(list(enumerate(c.channel_mult))):
            for index in range(c.res_blocks(level) + 1):
                skip_channels.pop()  # the skip's width is implied by the concatenated input
                channels = mult * c.model_channels
                block = [ResBlock(channels, dtype=dtype)]
                if rate in c.attention_resolutions:
                    block.append(transformer(channels))
                if level and index == c.res_blocks(level):
                    block.append(Upsample(channels, dtype=dtype))
                    rate //= 2
                output_blocks.append(block)
        self.output_blocks = output_blocks
        self.out_0 = layers.group_norm(NORM_GROUPS, RESBLOCK_NORM_EPS, dtype=dtype)
        self.out_2 = layers.conv(c.out_channels, 3, dtype=dtype)

    def _run_block(self, group: str, index: int | None, h: jax.Array, emb: jax.Array, context: jax.Array,
                   image_tokens: jax.Array | None, scale: FusionWeights | jax.Array | float,
                   single_view: jax.Array | None) -> jax.Array:
        """One UNet block (the official CondSequential): its layers in order, each fed what it needs."""
        block = getattr(self, group)
        for layer in block if index is None else block[index]:
            if isinstance(layer, ResBlock):
                h = layer(h, emb)
            elif isinstance(layer, SpatialTransformer3D):
                h = layer(h, context, image_tokens, scale, single_view)
            else:
                h = layer(h)
        return nn.with_logical_constraint(h, ACT_NHWC)

    def __call__(self, x: jax.Array, timesteps: jax.Array, context: jax.Array, camera: jax.Array | None = None,
                 image_tokens: jax.Array | None = None, scale: FusionWeights | jax.Array | float = 1.0,
                 camera_mask: jax.Array | None = None, single_view: jax.Array | None = None) -> jax.Array:
        """`camera_mask` [b * views] and `single_view` [b] are for batches mixing 3D and 2D objects (training): rows
        with camera_mask 0 get no camera embedding, objects with single_view True attend within each view only
        (MVDream's num_frames=1 without camera, at a static shape). None (inference) changes nothing."""
        c = self.config
        if x.shape[0] % c.num_frames:
            raise ValueError(f"UNet batch {x.shape[0]} is not a multiple of num_frames={c.num_frames}; rows must be "
                             "[object * views]: pass num_frames views per object")
        if image_tokens is not None and not c.image_branch:
            raise ValueError("image tokens were passed but this UNet has no image branch (no to_k_ip/to_v_ip: an "
                             "MVDream-style base); generate text-only (no retrieved images) or use an MV-RAG release")
        if camera is not None and c.camera_dim is None:
            raise ValueError("a camera was passed but the UNet config has camera_dim=None (no camera_embed); "
                             "pass camera=None or use a release with camera_dim")
        t_emb = timestep_embedding(timesteps, c.model_channels).astype(x.dtype)  # [b * views, model_channels]
        emb = self.time_embed_2(nn.silu(self.time_embed_0(t_emb)))  # [b * views, 4 * model_channels]
        if camera is not None:
            camera_emb = self.camera_embed_2(nn.silu(self.camera_embed_0(camera)))  # [b * views, 4 * model_channels]
            if camera_mask is not None:
                camera_emb = camera_emb * camera_mask[:, None].astype(camera_emb.dtype)
            emb = emb + camera_emb
        emb = nn.with_logical_constraint(emb, (BATCH, ACT_EMBED))

        run = type(self)._run_block
        # Static args counted with the module as argument 0: (group, index).
        if c.remat == "ordered":
            run = ordered_remat(run, static_argnums=(1, 2))
        elif c.remat != "none":
            run = nn.remat(run, static_argnums=(1, 2), policy=REMAT_POLICIES[c.remat])
        h, skips = nn.with_logical_constraint(x, ACT_NHWC), []
        for index in range(len(self.input_blocks)):
            h = run(self, "input_blocks", index, h, emb, context, image_tokens, scale, single_view)  # [b * views, h', w', c']
            skips.append(h)
        h = run(self, "middle_block", None, h, emb, context, image_tokens, scale, single_view)
        for index in range(len(self.output_blocks)):
            h = jnp.concatenate([h, skips.pop()], axis=-1)  # [b * views, h', w', c' + c_skip]
            h = run(self, "output_blocks", index, h, emb, context, image_tokens, scale, single_view)
        h = self.out_2(nn.silu(self.out_0(h)))  # [b * views, h, w, out_channels]
        return h.astype(x.dtype)


def dummy_inputs(config: UNetConfig, batch_size: int = 1, num_image_tokens: int = 1) -> dict[str, jax.Array]:
    """Zero inputs of the right shapes for `batch_size` objects (x NHWC); image tokens present so to_k_ip exist."""
    rows = batch_size * config.num_frames
    return {
        "x": jnp.zeros((rows, config.image_size, config.image_size, config.in_channels), jnp.float32),
        "timesteps": jnp.zeros((rows,), jnp.float32),
        "context": jnp.zeros((rows, CONTEXT_LENGTH, config.context_dim), jnp.float32),
        "camera": None if config.camera_dim is None else jnp.zeros((rows, config.camera_dim), jnp.float32),
        "image_tokens": (jnp.zeros((rows, num_image_tokens, config.context_dim), jnp.float32)
                         if config.image_branch else None),
        "scale": jnp.float32(1.0),
    }


def init_params(config: UNetConfig, rng: jax.Array) -> Any:
    """The (logically boxed) `params` collection of `MultiViewUNet(config)`; pure, so eval_shape/jit friendly."""
    return MultiViewUNet(config).init(rng, **dummy_inputs(config))["params"]
