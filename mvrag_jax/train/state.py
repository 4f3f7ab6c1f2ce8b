"""The train state and how it is born: abstract shapes + shardings first, then weights placed straight onto them.

    models = model_configs(cfg)                                        # static configs of the five components
    shapes, shardings = abstract_params(models, mesh, rules)           # eval_shape only, nothing allocated
    state = init_state(rng, cfg, models, tx, mesh, rules, trainable="ip")

`TrainState` holds the params split in two by train/trainable.py: `trainable` (updated, has optimizer state) and
`frozen` (passed through untouched, stored in cfg.train.frozen_dtype: bfloat16 halves the resident weights of a
bf16-compute run, whose layers cast every weight to bf16 anyway, and never rounds what is exported, since export takes
frozen weights from the init checkpoint), plus `ema`, the exponential moving average of `trainable` (train/ema.py;
same tree and shardings, {} when cfg.train.ema_decay is 0). Components: unet, resampler, clip_text, clip_vision,
vae (DINOv2 is an inference-only fusion model and is not part of training).

Where weights come from (cfg.train.init):
- a converted checkpoint folder: every weight loaded on the host and `jax.device_put` to its sharding;
- "random": weights filled on the host (`bench.host_random_params`: fast, no compile), for tests and the demo;
- "base", a checkpoint without the image branch, or cfg.train.reset_ip: the IP-Adapter convention, to_k_ip /
  to_v_ip start as copies of to_k / to_v, and the resampler is freshly initialised by a jitted init that is born
  sharded (out_shardings). The resampler is the only thing ever jit-initialised: a full UNet `init` would compile
  for minutes on CPU.
"""

import dataclasses
import functools
import logging
import pathlib
from typing import Any

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from mvrag_jax import sharding
from mvrag_jax.models.random_params import host_random_params
from mvrag_jax.convert.checkpoint import CheckpointError, load_checkpoint, load_configs
from mvrag_jax.convert.components import COMPONENTS as CONVERTED
from mvrag_jax.convert.keys import flatten, unflatten
from mvrag_jax.models import clip, resampler, unet, vae
from mvrag_jax.train.trainable import merge_params, split_trainable
from mvrag_jax.errors import MvragError, UsageError

_LOG = logging.getLogger(__name__)
COMPONENTS = ("unet", "resampler", "clip_text", "clip_vision", "vae")
INIT_MODES = ("random", "base")  # anything else is a checkpoint path
IP_MODULES = {"to_k_ip": "to_k", "to_v_ip": "to_v"}  # image-branch projection -> the text projection it starts from
_CONFIG_CLASSES = {c.name: c.config_class for c in CONVERTED}  # a checkpoint may hold more (dinov2): not trained


class InitError(MvragError, ValueError):
    """The configured init source cannot give the params the model needs."""


@jax.tree_util.register_static  # hashable, leaf-free: bound into the step as a static argument
@dataclasses.dataclass(frozen=True)
class ModelConfigs:
    """Static configs of the trained model's components (sizes + runtime dtype/remat)."""
    unet: unet.UNetConfig
    resampler: resampler.ResamplerConfig
    clip_text: clip.CLIPTextConfig
    clip_vision: clip.CLIPVisionConfig
    vae: vae.VAEConfig

    def init_fns(self) -> dict[str, Any]:
        """component -> pure `init(rng)` returning its (logically boxed) params."""
        return {"unet": functools.partial(unet.init_params, self.unet),
                "resampler": functools.partial(resampler.init_params, self.resampler),
                "clip_text": functools.partial(clip.init_text_params, self.clip_text),
                "clip_vision": functools.partial(clip.init_vision_params, self.clip_vision),
                "vae": functools.partial(vae.init_params, self.vae)}


class TrainState(flax.struct.PyTreeNode):
    """Everything a step reads and writes; a plain pytree of arrays (orbax saves it as is)."""
    step: jax.Array            # int32 scalar: steps run (skipped ones included); the step rng folds it in
    trainable: dict            # {"resampler": ..., "unet": {... to_k_ip/to_v_ip ...}} for trainable="ip"
    frozen: dict               # every other param, same nesting; never updated
    opt_state: Any             # optax state of `trainable` only
    skipped_steps: jax.Array   # int32 scalar: steps whose loss or grads were not finite (no update applied)
    ema: dict = flax.struct.field(default_factory=dict)  # EMA of `trainable` (same tree), {} without EMA

    def params(self, ema: bool = False) -> dict:
        """All params as one nested dict per component (for sampling and export); `ema`: the EMA in place of the
        trainable weights."""
        if ema and not self.ema:
            raise UsageError("this train state holds no EMA (train.ema_decay=0); sample the trained weights instead")
        return merge_params(self.ema if ema else self.trainable, self.frozen)


def is_checkpoint_init(init: str) -> bool:
    return init not in INIT_MODES


def model_configs(cfg: Any) -> ModelConfigs:
    """Sizes from the init checkpoint when cfg.train.init is one (the weights decide), else from cfg.model; the
    compute dtype and remat policy always from cfg.runtime, views from cfg.model.num_frames."""
    init = str(cfg.train.init)
    if not init:
        raise InitError("cfg.train.init is empty; set --config.train.init to a converted checkpoint folder "
                        "(`mvrag convert --out`), or to random/base for a run without pretrained weights")
    dtype = str(cfg.runtime.dtype)
    if is_checkpoint_init(init):
        configs = load_configs(pathlib.Path(init).expanduser(), _CONFIG_CLASSES)
        missing = sorted({"unet", "clip_text", "clip_vision", "vae"} - set(configs))
        if missing:
            raise InitError(f"checkpoint {init} lacks components {missing}; convert a full MV-RAG (or MVDream) "
                            "release with `mvrag convert`")
        # A base checkpoint has no resampler: it gets the configured sizes and a fresh init.
        res = configs.get("resampler", resampler.ResamplerConfig.from_config(cfg))
        return ModelConfigs(
            unet=dataclasses.replace(configs["unet"], num_frames=int(cfg.model.num_frames), dtype=dtype,
                                     remat=str(cfg.runtime.remat), attention=str(cfg.runtime.attention)),
            resampler=dataclasses.replace(res, dtype=dtype),
            clip_text=dataclasses.replace(configs["clip_text"], dtype=dtype),
            clip_vision=dataclasses.replace(configs["clip_vision"], dtype=dtype),
            vae=dataclasses.replace(configs["vae"], dtype=dtype))
    return ModelConfigs(unet=unet.UNetConfig.from_config(cfg), resampler=resampler.ResamplerConfig.from_config(cfg),
                        clip_text=clip.CLIPTextConfig.from_config(cfg),
                        clip_vision=clip.CLIPVisionConfig.from_config(cfg), vae=vae.VAEConfig.from_config(cfg))


def abstract_params(models: ModelConfigs, mesh: Mesh, rules=sharding.DEFAULT_RULES) -> tuple[dict, dict]:
    """(ShapeDtypeStruct tree, NamedSharding tree) of all params, per component; eval_shape only."""
    shapes, shardings = {}, {}
    key = jax.eval_shape(jax.random.key, 0)  # abstract: under a compile-only (AOT) mesh nothing may execute
    for name, init_fn in models.init_fns().items():
        shapes[name], shardings[name] = sharding.abstract_state(init_fn, mesh, rules, key)
    return shapes, shardings


def opt_state_shardings(abstract_opt_state: Any, param_shardings: dict, mesh: Mesh) -> Any:
    """Optimizer-state shardings: a moment whose dict path and shape are a param's gets that param's sharding;
    counters and other scalars are replicated."""
    by_path = {path: s for path, s in flatten(param_shardings).items()}
    replicated = NamedSharding(mesh, PartitionSpec())

    def pick(path, leaf):
        names = tuple(str(p.key) for p in path if isinstance(p, jax.tree_util.DictKey))
        found = by_path.get(names)
        return found if found is not None and leaf.ndim > 0 else replicated
    return jax.tree_util.tree_map_with_path(pick, abstract_opt_state)


def with_ip_from_text(unet_params: dict) -> dict:
    """The IP-Adapter init: every attn2 (text cross-attention; attn1 has no image branch) gets to_k_ip / to_v_ip as
    copies of its to_k / to_v. Host arrays in, host arrays out."""
    def walk(tree: dict, key: str) -> dict:
        out = {k: walk(v, k) if isinstance(v, dict) else v for k, v in tree.items()}
        if key == "attn2":
            for ip, text in IP_MODULES.items():
                out[ip] = jax.tree.map(np.array, tree[text])  # a copy, not a view
        return out
    return walk(unet_params, "")


def _has_ip(unet_params: dict) -> bool:
    return any(path[-2] in IP_MODULES for path in flatten(unet_params))


def _check_shapes(name: str, host: dict, shapes: dict, source: str) -> None:
    got = {path: tuple(np.shape(v)) for path, v in flatten(host).items()}
    want = {path: tuple(s.shape) for path, s in flatten(shapes).items()}
    missing = sorted("/".join(p) for p in set(want) - set(got))
    unexpected = sorted("/".join(p) for p in set(got) - set(want))
    wrong = sorted(f"{'/'.join(p)} {got[p]} != {want[p]}" for p in set(got) & set(want) if got[p] != want[p])
    if missing or unexpected or wrong:
        show = lambda items: ", ".join(items[:10]) + (f" (+{len(items) - 10} more)" if len(items) > 10 else "")
        raise CheckpointError(f"{name} params from {source} do not match the model: missing [{show(missing)}] "
                              f"unexpected [{show(unexpected)}] wrong shape [{show(wrong)}]; re-convert the release "
                              "with this version of `mvrag convert`")


def host_params(cfg: Any, shapes: dict) -> dict:
    """Numpy params per component; without "resampler" when it must be freshly initialised (base init)."""
    init, seed = str(cfg.train.init), int(cfg.train.seed)
    if not is_checkpoint_init(init):
        host = {name: host_random_params(shapes[name], seed + i) for i, name in enumerate(COMPONENTS)}
        base = init == "base"
    else:
        _, loaded = load_checkpoint(pathlib.Path(init).expanduser(), _CONFIG_CLASSES)
        host = {name: loaded[name] for name in COMPONENTS if name in loaded}
        base = bool(cfg.train.reset_ip) or "resampler" not in host or not _has_ip(host["unet"])
    if base or init == "random":  # a real init for the resampler (host_random_params' zero biases are fine, its
        host.pop("resampler", None)  # learned queries are not: they are the whole input of the first layer)
    if base:
        host["unet"] = with_ip_from_text(_drop_ip(host["unet"]))
        _LOG.info("image branch of %s: to_k_ip/to_v_ip copied from to_k/to_v, fresh resampler", init)
    for name, params in host.items():
        _check_shapes(name, params, shapes[name], f"init {init}")
    return host


def _drop_ip(unet_params: dict) -> dict:
    return unflatten({p: v for p, v in flatten(unet_params).items() if p[-2] not in IP_MODULES})


FROZEN_DTYPES = ("float32", "bfloat16")
FROZEN_SHARDINGS = ("rules", "replicate_unet")


def _train_choice(cfg: Any, field: str, choices: tuple[str, ...]) -> str:
    """cfg.train.<field> (default: the first choice), checked against `choices`."""
    value = str(cfg.train.get(field, choices[0]))
    if value not in choices:
        raise InitError(f"train.{field}={value!r}; set --config.train.{field} to one of {', '.join(choices)}")
    return value


def frozen_sharding_of(cfg: Any) -> str:
    return _train_choice(cfg, "frozen_sharding", FROZEN_SHARDINGS)


def place_frozen(frozen_shardings: dict, mode: str, mesh: Mesh) -> dict:
    """Shardings of the frozen params: the logical rules' ("rules": fsdp-sharded like everything else), or with the
    frozen UNet replicated ("replicate_unet": no weight all-gathers in the UNet's forward and backward, a faster
    compile (micro config on v5e:2x4: 90 -> 71 s), for a full bf16 UNet copy, 1.6 GiB, per chip)."""
    if mode == "rules" or "unet" not in frozen_shardings:
        return frozen_shardings
    replicated = NamedSharding(mesh, PartitionSpec())
    return {**frozen_shardings, "unet": jax.tree.map(lambda _: replicated, frozen_shardings["unet"])}


def frozen_dtype_of(cfg: Any) -> str:
    return _train_choice(cfg, "frozen_dtype", FROZEN_DTYPES)


def _as_frozen_dtype(tree: Any, dtype: str) -> Any:
    """Floating leaves (arrays or ShapeDtypeStructs) in `dtype`; integer leaves as they are."""
    def cast(leaf):
        if not jnp.issubdtype(leaf.dtype, jnp.floating):
            return leaf
        if isinstance(leaf, jax.ShapeDtypeStruct):
            return jax.ShapeDtypeStruct(leaf.shape, jnp.dtype(dtype), sharding=leaf.sharding)
        return leaf.astype(dtype)
    return jax.tree.map(cast, tree)


def init_state(rng: jax.Array, cfg: Any, models: ModelConfigs, tx: optax.GradientTransformation, mesh: Mesh,
               shapes: dict, shardings: dict, rules=sharding.DEFAULT_RULES, trainable: str = "ip",
               ema: bool = False) -> TrainState:
    """A TrainState whose every array is born on its sharding (see the module docstring for the sources);
    `shapes`/`shardings` are `abstract_params(models, mesh, rules)`. With `ema`, the EMA starts as a copy of the
    initial trainable weights (its first update replaces it: train/ema.py)."""
    host = host_params(cfg, shapes)
    params = {name: jax.device_put(host[name], shardings[name]) for name in host}
    if "resampler" not in params:  # the one jitted init: small, and born sharded
        params["resampler"] = sharding.init_sharded(models.init_fns()["resampler"], mesh, rules, rng)
    train_params, frozen = split_trainable(params, trainable)
    train_shardings, frozen_shardings = split_trainable(shardings, trainable)
    placed = place_frozen(frozen_shardings, frozen_sharding_of(cfg), mesh)
    if frozen_dtype_of(cfg) != "float32" or placed is not frozen_shardings:  # on device, replacing the copy
        frozen = jax.jit(functools.partial(_as_frozen_dtype, dtype=frozen_dtype_of(cfg)),
                         out_shardings=placed, donate_argnums=0)(frozen)
    abstract_opt = jax.eval_shape(tx.init, train_params)
    opt_state = jax.jit(tx.init, out_shardings=opt_state_shardings(abstract_opt, train_shardings, mesh))(train_params)
    scalar = NamedSharding(mesh, PartitionSpec())
    zero = lambda: jax.device_put(np.zeros((), np.int32), scalar)  # host value: fine on every process
    # A copy in its own buffers (the step donates the state: no buffer may appear twice in it).
    ema_params = jax.jit(lambda t: jax.tree.map(jnp.copy, t), out_shardings=train_shardings)(train_params) if ema \
        else {}
    return TrainState(step=zero(), trainable=train_params, frozen=frozen, opt_state=opt_state, skipped_steps=zero(),
                      ema=ema_params)


def abstract_train_state(shapes: dict, shardings: dict, tx: optax.GradientTransformation, mesh: Mesh,
                         trainable: str = "ip", frozen_dtype: str = "float32", frozen_sharding: str = "rules",
                         ema: bool = False) -> tuple[TrainState, TrainState]:
    """(abstract TrainState of ShapeDtypeStructs carrying their shardings, TrainState of NamedShardings) from
    `abstract_params(models, mesh, rules)`; `ema`: with an EMA shaped and sharded like the trainable weights."""
    train_shapes, frozen_shapes = split_trainable(shapes, trainable)
    frozen_shapes = _as_frozen_dtype(frozen_shapes, frozen_dtype)
    train_shardings, frozen_shardings = split_trainable(shardings, trainable)
    frozen_shardings = place_frozen(frozen_shardings, frozen_sharding, mesh)
    abstract_opt = jax.eval_shape(tx.init, train_shapes)
    scalar = NamedSharding(mesh, PartitionSpec())
    state_shardings = TrainState(step=scalar, trainable=train_shardings, frozen=frozen_shardings,
                                 opt_state=opt_state_shardings(abstract_opt, train_shardings, mesh),
                                 skipped_steps=scalar, ema=train_shardings if ema else {})
    scalar_shape = jax.ShapeDtypeStruct((), jnp.int32)
    state_shapes = TrainState(step=scalar_shape, trainable=train_shapes, frozen=frozen_shapes,
                              opt_state=abstract_opt, skipped_steps=scalar_shape,
                              ema=train_shapes if ema else {})
    abstract = jax.tree.map(lambda s, sh: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sh),
                            state_shapes, state_shardings)
    return abstract, state_shardings
