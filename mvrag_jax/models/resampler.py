"""The Perceiver resampler of MV-RAG: CLIP ViT-H/14 penultimate features of retrieved images -> Q image tokens.

Semantics follow the official modules/resampler.py (adapted from open_flamingo): learned latents [1, Q, dim] attend
to concat(proj_in(x), latents) through `depth` PerceiverAttention + FeedForward layers, then proj_out and norm_out.
Module names mirror the release keys (`layers.0.0.to_kv.weight` -> `layers_0_0/to_kv/kernel`).

The official `Resampler.from_pretrained` never reads resampler/config.json: sizes come from its kwargs, whose
defaults are the full-size model (the defaults below), and a release need not ship one. `ResamplerConfig.from_release`
therefore checks any config.json against the tensor shapes of resampler/model.safetensors and takes every size it
lacks from those shapes; heads vs dim_head, which shapes cannot separate, falls back to the official dim_head=64.
"""

import dataclasses
import logging
import re
from typing import Any, Mapping

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from mvrag_jax.models.config import check_compute_dtype, config_block
from mvrag_jax.models.layers import attention, dense, layer_norm
from mvrag_jax.sharding import ACT_EMBED, BATCH, EMBED, HEADS, LENGTH, MLP
from mvrag_jax.inputs.release import Release
from mvrag_jax.errors import MvragError, UsageError


_LOG = logging.getLogger(__name__)

LAYER_NORM_EPS = 1e-5  # torch nn.LayerNorm default, used by every norm of the official resampler
OFFICIAL_DIM_HEAD = 64  # official default; the only way to split heads from dim_head when config.json is absent
SIZE_FIELDS = ("dim", "depth", "dim_head", "heads", "num_queries", "embedding_dim", "output_dim", "ff_mult")
_LAYER_KEY = re.compile(r"^layers\.(\d+)\.")


class ResamplerConfigError(MvragError, ValueError):
    """A release's resampler sizes cannot be determined, or its config.json contradicts its weights."""


@jax.tree_util.register_static  # a config is static under jit/eval_shape: `jax.eval_shape(init_params, config, rng)`
@dataclasses.dataclass(frozen=True)
class ResamplerConfig:
    """Sizes of the resampler; the defaults are the official kwargs defaults (the released full-size model)."""

    dim: int = 1024            # latent width
    depth: int = 4             # PerceiverAttention + FeedForward pairs
    dim_head: int = 64
    heads: int = 12
    num_queries: int = 16      # Q image tokens per retrieved image
    embedding_dim: int = 1280  # CLIP ViT-H/14 hidden size
    output_dim: int = 1024     # UNet cross-attention context dim
    ff_mult: int = 4
    dtype: str = "float32"     # compute dtype: float32 | bfloat16 (params stay float32)
    # Where the sizes came from (config.json or tensor shapes); informational, so equality ignores it.
    source: str = dataclasses.field(default="defaults", compare=False)

    def __post_init__(self):
        check_compute_dtype(self.dtype, "resampler")
        bad = {name: getattr(self, name) for name in SIZE_FIELDS
               if not isinstance(getattr(self, name), (int, np.integer)) or getattr(self, name) < 1}
        if bad:
            raise UsageError(f"resampler sizes must be positive integers, got {bad}; fix the config")

    @classmethod
    def from_config(cls, cfg: Any) -> "ResamplerConfig":
        """From a full ConfigDict (configs/mvrag_sd21.py): sizes from cfg.model.resampler, dtype from cfg.runtime."""
        block = config_block(cfg, "resampler", SIZE_FIELDS)
        return cls(**{k: int(v) for k, v in block.items()}, dtype=str(cfg.runtime.dtype), source="config")

    @classmethod
    def from_release(cls, release: "Release") -> "ResamplerConfig":
        """Sizes of the release's resampler: resampler/config.json where present, validated against the tensor
        shapes of resampler/model.safetensors; every size the file lacks comes from the shapes, and heads vs dim_head
        (which shapes cannot separate) from the official dim_head=64."""
        folder = release.folder("resampler")
        derived = sizes_from_shapes(release.shapes("resampler"))
        file_config = release.config("resampler")
        given = {} if file_config is None else {name: file_config[name] for name in SIZE_FIELDS if name in file_config}
        _validate_against_shapes(given, derived, folder)
        sizes = {name: value for name, value in derived.items() if name in SIZE_FIELDS} | given
        lacking = [name for name in SIZE_FIELDS if name not in sizes and name not in ("heads", "dim_head")]
        if lacking:
            raise ResamplerConfigError(
                f"{folder}/model.safetensors lacks the tensors that give {lacking} and no config.json sets them; "
                "restore model.safetensors from the official release")
        sizes |= _heads_and_dim_head(given, derived.get("inner"), folder)
        from_shapes = sorted(set(SIZE_FIELDS) - set(given))
        source = ("shapes of resampler/model.safetensors (no config.json)" if file_config is None else
                  "resampler/config.json validated against model.safetensors"
                  + (f"; from shapes: {', '.join(from_shapes)}" if from_shapes else ""))
        if "dim_head" not in given and "heads" not in given:
            source += f"; dim_head={OFFICIAL_DIM_HEAD} is the official default, assumed"
        config = cls(**sizes, source=source)
        _LOG.info("resampler sizes from %s: %s", source, config)
        return config


def sizes_from_shapes(shapes: Mapping[str, tuple[int, ...]]) -> dict[str, int]:
    """What official tensor shapes say about the sizes; `inner` = heads * dim_head. Absent tensors are skipped (the
    key check reports them later), so a missing tensor only matters when nothing else gives its size."""
    derived: dict[str, int] = {}
    if "latents" in shapes:
        _, derived["num_queries"], derived["dim"] = shapes["latents"]        # [1, Q, dim]
    if "proj_in.weight" in shapes:
        derived["dim"], derived["embedding_dim"] = shapes["proj_in.weight"]  # [dim, embedding_dim]
    if "proj_out.weight" in shapes:
        derived["output_dim"] = shapes["proj_out.weight"][0]                # [output_dim, dim]
    layers = {int(m.group(1)) for m in map(_LAYER_KEY.match, shapes) if m}
    if layers:
        derived["depth"] = max(layers) + 1  # a gap in the indices shows up as missing keys in the key check
    first = min(layers, default=0)
    if f"layers.{first}.0.to_q.weight" in shapes:
        derived["inner"] = shapes[f"layers.{first}.0.to_q.weight"][0]      # [heads * dim_head, dim]
    ff_key = f"layers.{first}.1.1.weight"                                   # [dim * ff_mult, dim]
    if ff_key in shapes and "dim" in derived:
        ff_inner = shapes[ff_key][0]
        if ff_inner % derived["dim"]:
            raise ResamplerConfigError(f"resampler feed-forward width {ff_inner} ({ff_key}) is not a multiple of "
                                       f"dim={derived['dim']}; only integer ff_mult is supported")
        derived["ff_mult"] = ff_inner // derived["dim"]
    return derived


def _heads_and_dim_head(given: dict[str, Any], inner: int | None, folder: Any) -> dict[str, int]:
    """heads and dim_head: as config.json gives them, the missing one from to_q's width, else dim_head=64."""
    if "heads" in given and "dim_head" in given:
        return {"heads": given["heads"], "dim_head": given["dim_head"]}
    fix = f'add "heads" and "dim_head" to {folder}/config.json (the kwargs the official Resampler was built with)'
    if inner is None:
        raise ResamplerConfigError(f"{folder}/model.safetensors has no layers.0.0.to_q.weight to size the heads; {fix}")
    if "heads" in given or "dim_head" in given:
        name, other = ("heads", "dim_head") if "heads" in given else ("dim_head", "heads")
        if inner % given[name]:
            raise ResamplerConfigError(f"{folder}/config.json sets {name}={given[name]}, which does not divide the "
                                       f"{inner} outputs of to_q (heads * dim_head); {fix}")
        return {name: given[name], other: inner // given[name]}
    if inner % OFFICIAL_DIM_HEAD:
        raise ResamplerConfigError(
            f"resampler to_q has {inner} outputs (heads * dim_head), not a multiple of the official "
            f"dim_head={OFFICIAL_DIM_HEAD}, and tensor shapes cannot separate heads from dim_head; {fix}")
    return {"heads": inner // OFFICIAL_DIM_HEAD, "dim_head": OFFICIAL_DIM_HEAD}


def _validate_against_shapes(given: dict[str, Any], derived: dict[str, int], folder: Any) -> None:
    """config.json must describe the weights: the official loader would fail on any mismatch (or not read it)."""
    conflicts = [f"{name}={given[name]} (tensors say {derived[name]})"
                 for name in SIZE_FIELDS if name in given and name in derived and given[name] != derived[name]]
    if "heads" in given and "dim_head" in given and "inner" in derived \
            and given["heads"] * given["dim_head"] != derived["inner"]:
        conflicts.append(f"heads*dim_head={given['heads']}*{given['dim_head']} (to_q has {derived['inner']} outputs)")
    if conflicts:
        raise ResamplerConfigError(
            f"{folder}/config.json does not match {folder}/model.safetensors: {'; '.join(conflicts)}. The official "
            "loader ignores config.json; fix it or delete it so sizes come from the weights")


class PerceiverAttention(nn.Module):
    """Latents attend to [features; latents]; all projections bias-free, q and k each scaled by dim_head^-0.25."""

    heads: int
    dim_head: int
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, latents: jax.Array) -> jax.Array:
        # x [b, t, dim] (after proj_in), latents [b, q, dim]
        dim, inner = latents.shape[-1], self.heads * self.dim_head
        x = layer_norm(LAYER_NORM_EPS, dtype=self.dtype, name="norm1")(x)
        latents = layer_norm(LAYER_NORM_EPS, dtype=self.dtype, name="norm2")(latents)
        q = dense(inner, (EMBED, HEADS), use_bias=False, dtype=self.dtype, name="to_q")(latents)  # [b, q, inner]
        kv_input = jnp.concatenate([x, latents], axis=1)                                            # [b, t + q, dim]
        kv = dense(2 * inner, (EMBED, HEADS), use_bias=False, dtype=self.dtype, name="to_kv")(kv_input)
        k, v = jnp.split(kv, 2, axis=-1)                                                             # [b, t + q, inner]
        # Scaling q and k separately (instead of the logits) keeps bf16 logits in range, as the official code does.
        scale = self.dim_head ** -0.25
        out = attention(q * scale, k * scale, v, self.heads, scale=1.0)                            # [b, q, inner]
        return dense(dim, (HEADS, EMBED), use_bias=False, dtype=self.dtype, name="to_out")(out)    # [b, q, dim]


class Resampler(nn.Module):
    """[n, T, embedding_dim] image features -> [n, num_queries, output_dim] image tokens."""

    config: ResamplerConfig

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        cfg, dtype = self.config, jnp.dtype(self.config.dtype)
        latents = self.param(
            "latents", nn.with_logical_partitioning(nn.initializers.normal(cfg.dim ** -0.5), (None, None, EMBED)),
            (1, cfg.num_queries, cfg.dim), jnp.float32)
        latents = jnp.broadcast_to(latents, (x.shape[0], cfg.num_queries, cfg.dim))  # [n, q, dim]
        # proj_in/proj_out kernels name their two sides differently: one mesh axis may not shard both.
        x = dense(cfg.dim, (MLP, EMBED), dtype=dtype, name="proj_in")(x)             # [n, t, dim]
        x = nn.with_logical_constraint(x, (BATCH, LENGTH, ACT_EMBED))
        for i in range(cfg.depth):
            latents = latents + PerceiverAttention(cfg.heads, cfg.dim_head, dtype, name=f"layers_{i}_0")(x, latents)
            h = layer_norm(LAYER_NORM_EPS, dtype=dtype, name=f"layers_{i}_1_0")(latents)
            h = dense(cfg.dim * cfg.ff_mult, (EMBED, MLP), use_bias=False, dtype=dtype, name=f"layers_{i}_1_1")(h)
            h = nn.gelu(h, approximate=False)                                        # torch nn.GELU() is erf-exact
            latents = latents + dense(cfg.dim, (MLP, EMBED), use_bias=False, dtype=dtype, name=f"layers_{i}_1_3")(h)
            latents = nn.with_logical_constraint(latents, (BATCH, LENGTH, ACT_EMBED))
        tokens = dense(cfg.output_dim, (EMBED, MLP), dtype=dtype, name="proj_out")(latents)  # [n, q, output_dim]
        return layer_norm(LAYER_NORM_EPS, dtype=dtype, name="norm_out")(tokens)


def init_params(config: ResamplerConfig, rng: jax.Array) -> Any:
    """The (logically boxed) `params` collection of a fresh resampler; pure, so it works under jax.eval_shape."""
    dummy = jnp.zeros((1, 1, config.embedding_dim), jnp.float32)  # one token: param shapes do not depend on T
    return Resampler(config).init(rng, dummy)["params"]


@jax.jit  # the config is a static pytree, so each config compiles once
def resample(config: ResamplerConfig, params: Any, features: jax.Array) -> jax.Array:
    """Image tokens [n, num_queries, output_dim] of CLIP features [n, T, embedding_dim] (params as converted)."""
    return Resampler(config).apply({"params": params}, features)
