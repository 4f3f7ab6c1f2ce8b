"""The Trainer: the mesh, the abstract (sharded) state and batch, `init`, and the jitted step, from one config.

    cfg = configs.train.get_config("size=tiny")
    mesh = make_mesh(cfg)                        # cfg.mesh sizes over all devices
    trainer = make_trainer(cfg, mesh)
    state = trainer.init(jax.random.key(cfg.train.seed))
    compiled, seconds = trainer.compile()        # AOT from ShapeDtypeStructs only
    programs = trainer.compile_programs()        # {name: (compiled, seconds)}: memory_analysis() of each, for plans
    batch = to_global(host_batch, trainer.batch_sharding)   # mvrag_jax/train/data.py
    state, metrics = compiled(state, batch, rng)  # or trainer.step(state, batch, rng) (jit, compiles on first call)

`trainer.step` and `compiled` donate the state: use the returned one. The step rng is the run's key, the same every
step (the step folds in state.step), so a resumed run draws the same noise.

cfg.train.encoders: "in_step" (one program: the frozen encoders inside the step) or "separate" (two programs per
step, "encode" then "train": see train/step.py).
"""

import contextlib
import dataclasses
import functools
import json
import pathlib
import time
from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from mvrag_jax import sharding
from mvrag_jax.diffusion.ddim import DDIMSchedule, SCHEDULER_CONFIG, alphas_cumprod
from mvrag_jax.inputs.images import OPENAI_CLIP_MEAN, OPENAI_CLIP_STD, PREPROCESSOR_FILE, CLIPImageProcessorConfig
from mvrag_jax.train import ema as ema_lib, optimizer, state as state_lib
from mvrag_jax.train.step import ENCODER_INPUTS, ENCODERS, StepOptions, alphas_cumprod_tuple, encode_step, train_step
from mvrag_jax.train.trainable import trainable_paths
from mvrag_jax.errors import MvragError

BATCH_AXES = ("data", "fsdp")  # the sharding vocabulary's BATCH rule: objects split over data x fsdp


class TrainConfigError(MvragError, ValueError):
    """The train config is inconsistent (batch vs mesh, data sizes vs model sizes)."""


class ProgramDoesNotFit(MvragError, ValueError):
    """XLA refused to compile a program of the step: it needs more device memory than the chip has."""

    def __init__(self, program: str, message: str, seconds: float):
        super().__init__(f"the {program} program does not fit in device memory: {message}; lower "
                         "--config.train.batch_size or remat more (--config.runtime.remat=ordered)")
        self.program, self.message, self.seconds = program, message, seconds


@dataclasses.dataclass(frozen=True)
class Trainer:
    mesh: Mesh
    rules: tuple
    models: state_lib.ModelConfigs
    abstract_state: state_lib.TrainState      # ShapeDtypeStructs carrying their shardings
    state_shardings: state_lib.TrainState     # NamedShardings, same structure
    batch_sharding: NamedSharding             # for every batch field (axis 0 over data x fsdp)
    abstract_batch: dict                      # field -> ShapeDtypeStruct (global shapes, with batch_sharding)
    abstract_rng: jax.ShapeDtypeStruct
    trainable_paths: tuple[str, ...]
    init: Callable[[jax.Array], state_lib.TrainState]
    jitted_step: Any                          # jax.jit(train_step, in/out shardings, donate_argnums=0)
    matmul_precision: str
    jitted_encode: Any = None                 # jax.jit(encode_step, ...) when train.encoders="separate"

    def step(self, state: state_lib.TrainState, batch: dict, rng: jax.Array) -> tuple[state_lib.TrainState, dict]:
        """(new state, metrics); `state` is donated."""
        with self._context():
            if self.jitted_encode is None:
                return self.jitted_step(state, batch, rng)
            return _two_programs(self.jitted_encode, self.jitted_step, state, batch, rng)

    def compile_programs(self, abstract_batch: dict | None = None) -> dict[str, tuple[Any, float]]:
        """{program name: (compiled, seconds to lower + compile)} from ShapeDtypeStructs only (nothing allocated):
        {"train"}, or {"encode", "train"} with separate encoders. `compiled.memory_analysis()` is the per-device
        memory plan of each."""
        batch = abstract_batch or self.abstract_batch
        lowered = {}
        with self._context():
            if self.jitted_encode is None:
                lowered["train"] = lambda: self.jitted_step.lower(self.abstract_state, batch, self.abstract_rng)
            else:
                encode_args = (encoder_params(self.abstract_state.frozen), batch, self.abstract_rng,
                               self.abstract_state.step)
                encoded = jax.eval_shape(self.jitted_encode, *encode_args)
                lowered["encode"] = lambda: self.jitted_encode.lower(*encode_args)
                lowered["train"] = lambda: self.jitted_step.lower(self.abstract_state, update_batch(batch),
                                                                  self.abstract_rng, encoded)
            programs = {}
            for name, lower in lowered.items():
                start = time.perf_counter()
                try:
                    compiled = lower().compile()
                except jax.errors.JaxRuntimeError as e:
                    if "RESOURCE_EXHAUSTED" not in str(e):
                        raise
                    raise ProgramDoesNotFit(name, str(e).strip().splitlines()[0], time.perf_counter() - start) from e
                programs[name] = compiled, time.perf_counter() - start
        return programs

    def compile(self, abstract_batch: dict | None = None) -> tuple[Any, float]:
        """(compiled step, seconds to lower + compile every program): call `compiled(state, batch, rng)`."""
        programs = self.compile_programs(abstract_batch)
        return step_of(programs), sum(s for _, s in programs.values())

    @contextlib.contextmanager
    def _context(self):
        """Mesh + logical rules + matmul precision at trace time (the model's logical constraints need them)."""
        with jax.set_mesh(self.mesh), nn.logical_axis_rules(self.rules), \
                jax.default_matmul_precision(self.matmul_precision):
            yield


def encoder_params(frozen: dict) -> dict:
    """The frozen encoders' components of the state's frozen params (what the encode program reads)."""
    return {name: frozen[name] for name in ENCODERS}


def update_batch(batch: dict) -> dict:
    """The batch fields the update program reads when the encoders run apart (not the pixels or token ids)."""
    return {name: value for name, value in batch.items() if name not in ENCODER_INPUTS}


def step_of(programs: dict[str, tuple[Any, float]]) -> Callable:
    """The step `(state, batch, rng) -> (state, metrics)` of `compile_programs()`' result: the train program, or
    encode then train."""
    if "encode" not in programs:
        return programs["train"][0]
    return functools.partial(_two_programs, programs["encode"][0], programs["train"][0])


def _two_programs(encode: Callable, update: Callable, state: state_lib.TrainState, batch: dict, rng: jax.Array
                  ) -> tuple[state_lib.TrainState, dict]:
    encoded = encode(encoder_params(state.frozen), batch, rng, state.step)
    return update(state, update_batch(batch), rng, encoded)


ENCODER_MODES = ("in_step", "separate")


def make_mesh(cfg: Any, devices=None) -> Mesh:
    """The (data, fsdp, tensor) mesh of cfg.mesh over all devices (or `devices`); with mesh.dcn_data/dcn_fsdp the
    hybrid mesh over several slices (sharding.make_mesh)."""
    return sharding.make_mesh(**sharding.mesh_sizes(cfg.mesh), devices=devices)


def _release_file(cfg: Any, *parts: str) -> pathlib.Path | None:
    """A release file copied into the init checkpoint by `mvrag convert` (release_files/...), if any."""
    if not state_lib.is_checkpoint_init(str(cfg.train.init)):
        return None
    path = pathlib.Path(str(cfg.train.init)).expanduser().joinpath("release_files", *parts)
    return path if path.is_file() else None


def schedule_of(cfg: Any) -> DDIMSchedule:
    """The release's DDPM schedule (scheduler/scheduler_config.json of the init checkpoint), else cfg.train.scheduler."""
    path = _release_file(cfg, "scheduler", SCHEDULER_CONFIG)
    if path is not None:
        return DDIMSchedule.from_config(json.loads(path.read_text()), where=str(path))
    return DDIMSchedule(**dict(cfg.train.scheduler))


def clip_statistics(cfg: Any) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """CLIP processor mean/std (feature_extractor/preprocessor_config.json of the init checkpoint, else OpenAI's)."""
    path = _release_file(cfg, "feature_extractor", PREPROCESSOR_FILE)
    if path is None:
        return OPENAI_CLIP_MEAN, OPENAI_CLIP_STD
    processor = CLIPImageProcessorConfig.from_dict(json.loads(path.read_text()))
    return tuple(processor.image_mean), tuple(processor.image_std)


def empty_prompt_ids(cfg: Any) -> tuple[int, ...]:
    """Token ids of "" with the tokenizer the loader uses (cfg.data.tokenizer_dir), padded to max_length."""
    from data_pipelines.transforms import Tokenizer  # transformers import: only when a trainer is built
    return tuple(int(i) for i in Tokenizer(cfg.data.tokenizer_dir, int(cfg.data.max_length))(""))


def abstract_batch(cfg: Any, models: state_lib.ModelConfigs, batch_sharding: NamedSharding) -> dict:
    """Global batch ShapeDtypeStructs (configs/data.py layout) for cfg.train.batch_size objects."""
    d, b = cfg.data, int(cfg.train.batch_size)
    f, k, r, s = int(d.num_views), int(d.num_retrieved), int(d.retrieved_size), int(d.image_size)
    image_dtype = jnp.uint8 if d.images_dtype == "uint8" else jnp.float32
    shape = lambda dims, dtype: jax.ShapeDtypeStruct(dims, dtype, sharding=batch_sharding)
    camera_dim = models.unet.camera_dim or 16
    return {"images": shape((b, f, s, s, 3), image_dtype), "view_mask": shape((b, f), jnp.int32),
            "camera": shape((b, f, camera_dim), jnp.float32), "camera_mask": shape((b,), jnp.int32),
            "retrieved": shape((b, k, r, r, 3), jnp.uint8), "input_ids": shape((b, int(d.max_length)), jnp.int32),
            "mode": shape((b,), jnp.int32)}


def check_config(cfg: Any, models: state_lib.ModelConfigs, mesh: Mesh) -> None:
    """Batch divisible over the mesh, per-host batch = global / hosts, data sizes the model can take."""
    b, pieces = int(cfg.train.batch_size), microbatches_of(cfg)
    shards = mesh.shape["data"] * mesh.shape["fsdp"]
    if b % shards:
        raise TrainConfigError(f"train.batch_size {b} is not divisible by data*fsdp={shards}; set "
                               f"--config.train.batch_size to a multiple of {shards}")
    if pieces < 1 or (b // shards) % pieces:
        raise TrainConfigError(f"train.microbatches {pieces}: each device's {b // shards} objects must split into "
                               f"that many pieces; set --config.train.microbatches to a divisor of {b // shards} "
                               f"(or --config.train.batch_size to a multiple of {shards * max(pieces, 1)})")
    if int(cfg.data.batch_size) * jax.process_count() != b:
        raise TrainConfigError(f"data.batch_size {cfg.data.batch_size} (per host) x {jax.process_count()} hosts != "
                               f"train.batch_size {b}; set --config.data.batch_size={b // jax.process_count()}")
    if int(cfg.data.num_views) != models.unet.num_frames:
        raise TrainConfigError(f"data.num_views {cfg.data.num_views} != the UNet's num_frames "
                               f"{models.unet.num_frames}; set --config.model.num_frames to the data's views")
    widths = {"resampler.output_dim": models.resampler.output_dim, "clip_text.hidden_size": models.clip_text.hidden_size,
              "unet.context_dim": models.unet.context_dim}
    if len(set(widths.values())) > 1 or models.resampler.embedding_dim != models.clip_vision.hidden_size:
        raise TrainConfigError(f"component widths disagree: {widths}, resampler.embedding_dim "
                               f"{models.resampler.embedding_dim} vs clip_vision.hidden_size "
                               f"{models.clip_vision.hidden_size}; fix cfg.model (or convert a consistent release)")
    factor = models.vae.downscale_factor * 2 ** (len(models.unet.channel_mult) - 1)
    if int(cfg.data.image_size) % factor:
        raise TrainConfigError(f"data.image_size {cfg.data.image_size} is not a multiple of {factor} (VAE x UNet "
                               "downsampling); choose e.g. 256 for the release")


def compiler_options_of(cfg: Any) -> dict[str, float] | None:
    """XLA compile options of the step's programs: train.compile_effort (XLA's exec_time_optimization_effort,
    -1..1; 0 = XLA's default, then no option is passed at all)."""
    effort = compile_effort_of(cfg)
    if not -1.0 <= effort <= 1.0:
        raise TrainConfigError(f"train.compile_effort={effort} is outside [-1, 1]; set --config.train.compile_effort "
                               "to 0 (XLA's default) or -1 (fastest compile, see README 'Memory and compile settings')")
    return {"exec_time_optimization_effort": effort} if effort else None


def text_weight_of(cfg: Any) -> float:
    """cfg.train.text_weight: l of the training fusion l * f_txt + f_ret (paper §3.3), checked."""
    if "ip_scale" in cfg.train:
        raise TrainConfigError(f"train.ip_scale={cfg.train.ip_scale} is gone: training now fuses "
                               "text_weight * text + 1 * retrieval (paper §3.3); set --config.train.text_weight "
                               "(0.5 trains what inference computes at fusion weight 0.5) and drop ip_scale")
    weight = float(cfg.train.text_weight)
    if not weight >= 0:
        raise TrainConfigError(f"train.text_weight={weight} is not a weight >= 0; set --config.train.text_weight "
                               "to the text term's weight, e.g. 0.5")
    return weight


def microbatches_of(cfg: Any) -> int:
    """cfg.train.microbatches: gradient accumulation pieces per step (1 for configs without it or a train block)."""
    return int(cfg.get("train", {}).get("microbatches", 1))


def compile_effort_of(cfg: Any) -> float:
    """cfg.train.compile_effort (0, XLA's default, for configs without it or a train block)."""
    return float(cfg.get("train", {}).get("compile_effort", 0.0))


def make_trainer(cfg: Any, mesh: Mesh) -> Trainer:
    """Everything needed to init and step a run of `cfg` (configs/train.py) on `mesh`; nothing is allocated or
    compiled here (eval_shape only)."""
    models = state_lib.model_configs(cfg)
    check_config(cfg, models, mesh)
    rules = sharding.make_rules(tuple(cfg.get("sharding_rules", ())))
    trainable = str(cfg.train.trainable)
    tx, schedule = optimizer.make_tx(cfg.train.optimizer, int(cfg.train.steps))
    ema_decay = ema_lib.ema_decay_of(cfg)
    with jax.set_mesh(mesh):
        shapes, param_shardings = state_lib.abstract_params(models, mesh, rules)
    paths = tuple(trainable_paths(shapes, trainable))  # raises for an unknown trainable set
    abstract, state_shardings = state_lib.abstract_train_state(shapes, param_shardings, tx, mesh, trainable,
                                                                   state_lib.frozen_dtype_of(cfg),
                                                                   state_lib.frozen_sharding_of(cfg), ema_decay > 0)
    batch_sharding = NamedSharding(mesh, PartitionSpec(BATCH_AXES))
    replicated = NamedSharding(mesh, PartitionSpec())
    mean, std = clip_statistics(cfg)
    options = StepOptions(
        empty_input_ids=empty_prompt_ids(cfg), alphas_cumprod=alphas_cumprod_tuple(alphas_cumprod(schedule_of(cfg))),
        clip_mean=mean, clip_std=std, cfg_drop_text=float(cfg.train.cfg_drop_text),
        cfg_drop_image=float(cfg.train.cfg_drop_image), cfg_drop_both=float(cfg.train.cfg_drop_both),
        text_weight=text_weight_of(cfg), ema_decay=ema_decay,
        encode_chunk_rows=int(cfg.train.get("encode_chunk_rows", 0)))
    if options.cfg_drop_text + options.cfg_drop_image + options.cfg_drop_both > 1:
        raise TrainConfigError("cfg_drop_text + cfg_drop_image + cfg_drop_both > 1; they are exclusive events")
    encoders = str(cfg.train.get("encoders", "in_step"))
    if encoders not in ENCODER_MODES:
        raise TrainConfigError(f"train.encoders={encoders!r}; set --config.train.encoders to one of "
                               f"{', '.join(ENCODER_MODES)}")
    options_xla = compiler_options_of(cfg)
    step_fn = functools.partial(train_step, models=models, tx=tx, schedule=schedule, options=options,
                                microbatches=microbatches_of(cfg), grad_shardings=state_shardings.trainable)
    jitted_encode = None
    if encoders == "in_step":
        jitted = jax.jit(step_fn, in_shardings=(state_shardings, batch_sharding, replicated),
                         out_shardings=(state_shardings, replicated), donate_argnums=0,
                         compiler_options=options_xla)
    else:  # shardings of the encoded arrays follow the batch (their axis 0 is objects or object-major rows)
        jitted_encode = jax.jit(functools.partial(encode_step, models=models, options=options),
                                in_shardings=(encoder_params(state_shardings.frozen), batch_sharding, replicated,
                                              replicated), out_shardings=batch_sharding,
                                compiler_options=options_xla)
        jitted = jax.jit(step_fn, in_shardings=(state_shardings, batch_sharding, replicated, batch_sharding),
                         out_shardings=(state_shardings, replicated), donate_argnums=0,
                         compiler_options=options_xla)

    def init(rng: jax.Array) -> state_lib.TrainState:
        with jax.set_mesh(mesh):
            return state_lib.init_state(rng, cfg, models, tx, mesh, shapes, param_shardings, rules, trainable,
                                        ema=ema_decay > 0)

    key = jax.random.key(0)
    return Trainer(mesh=mesh, rules=rules, models=models, abstract_state=abstract, state_shardings=state_shardings,
                   batch_sharding=batch_sharding, abstract_batch=abstract_batch(cfg, models, batch_sharding),
                   abstract_rng=jax.ShapeDtypeStruct(key.shape, key.dtype, sharding=replicated),
                   trainable_paths=paths, init=init, jitted_step=jitted,
                   matmul_precision=str(cfg.runtime.matmul_precision), jitted_encode=jitted_encode)


def host_batch_example(cfg: Any, seed: int = 0) -> dict[str, np.ndarray]:
    """A random host batch of the configured global shapes (half 3D, half 2D objects): for tests and benchmarks."""
    d, b = cfg.data, int(cfg.train.batch_size)
    f, k, r, s = int(d.num_views), int(d.num_retrieved), int(d.retrieved_size), int(d.image_size)
    rng = np.random.default_rng(seed)
    mode = (np.arange(b) % 2).astype(np.int32)  # 0 = 3D, 1 = 2D
    view_mask = np.where(mode[:, None] == 0, 1, (np.arange(f) == 0)[None]).astype(np.int32)
    images = rng.integers(0, 256, (b, f, s, s, 3), dtype=np.uint8) * view_mask[:, :, None, None, None].astype(np.uint8)
    camera = rng.standard_normal((b, f, 16)).astype(np.float32) * (mode == 0)[:, None, None]
    return {"images": images, "view_mask": view_mask, "camera": camera.astype(np.float32),
            "camera_mask": (mode == 0).astype(np.int32),
            "retrieved": rng.integers(0, 256, (b, k, r, r, 3), dtype=np.uint8),
            "input_ids": rng.integers(0, 500, (b, int(d.max_length))).astype(np.int32), "mode": mode}
