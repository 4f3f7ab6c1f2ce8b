"""Benchmark of the train step: compile time and steady-state step time per mesh; on a GPU, the largest batch.

    mvrag bench train --config configs/train.py:size=tiny --meshes "data=1 data=8 data=2,fsdp=4" --steps 5
    mvrag bench train --config configs/train.py:size=full --find_max_batch        # a GPU (or TPU) machine

    record = bench_train(get_config("size=tiny"), ["data=1", "data=2,fsdp=4"], steps=5)   # from Python

Each mesh gets the real trainer (train/trainer.py: frozen encoders in-graph, optimizer update, donated state) built
for the config with its weights from cfg.train.init ("random" when unset: no checkpoint needed), a synthetic batch of
the loader's layout (trainer.host_batch_example: uint8 views and retrievals, half 3D, half 2D objects) made global
at the one boundary (train/data.py: to_global), the step compiled ahead of time (lower + compile timed apart), then
`warmup` untimed and `steps` timed calls, each waited for with block_until_ready (train.encoders="separate": the
step is two programs, timed together, memory reported per program). Every object is one
num_views-view sample (2D objects run all views, masked), so objects/s is the four-view samples/s of the paper's
configs; views/s counts the UNet's image rows. Fake CPU devices must exist before JAX starts: `mvrag bench train`
asks for as many as the largest mesh needs (jax_num_cpu_devices), in Python set XLA_FLAGS /
jax_num_cpu_devices yourself. Compile times are only compile times with the XLA cache off (--compile_cache_dir none);
the record says when the compile was a cache hit.
"""

import contextlib
import copy
import statistics
import sys
import time
from typing import Any, Callable, Iterator, Sequence

import jax
from jax.sharding import Mesh
from tqdm import tqdm

from mvrag_jax import sharding
from mvrag_jax.bench.memory import compiled_memory
from mvrag_jax.models.attention_kernels import resolve_kernel
from mvrag_jax.train.data import to_global
from mvrag_jax.train.plan import largest_fitting, parse_mesh
from mvrag_jax.train.trainer import Trainer, host_batch_example, make_trainer, microbatches_of, step_of
from mvrag_jax.errors import MvragError

COMPILE_EVENT = "/jax/core/compile/backend_compile_duration"  # every XLA compile, cache hits included
CACHE_HIT_EVENT = "/jax/compilation_cache/cache_hits"
_OOM_MARKERS = ("RESOURCE_EXHAUSTED", "out of memory", "Out of memory")


class BenchTrainError(MvragError, ValueError):
    """A bench train request that cannot run as given (config kind, mesh vs devices, batch vs mesh)."""


def parse_meshes(texts: Sequence[str]) -> list[dict[str, int]]:
    """`["data=8", "data=2,fsdp=4 tensor=2"]` -> mesh sizes (an item may hold several meshes, split by spaces or
    ';'); axes not named are 1, one may be -1 (the remaining devices)."""
    items = [item for text in texts for item in text.replace(";", " ").split()]
    if not items:
        raise BenchTrainError("no mesh given; pass e.g. --meshes data=1 (one device) or data=-1 (all devices)")
    return [parse_mesh(item, rest=None) for item in items]


def _meshes(cfg: Any, meshes: Sequence[str] | None) -> list[dict[str, int]]:
    """The meshes asked for, else the config's mesh block."""
    _check_train_config(cfg)
    return parse_meshes(meshes) if meshes else [{axis: int(cfg.mesh[axis]) for axis in sharding.MESH_AXES}]


def devices_needed(meshes: Sequence[dict[str, int]]) -> int:
    """Devices the largest mesh occupies (a -1 axis counts 1: it takes whatever is there)."""
    return max(int(abs(m["data"] * m["fsdp"] * m["tensor"])) for m in meshes)


def mesh_label(mesh: Mesh) -> str:
    return ",".join(f"{axis}={size}" for axis, size in mesh.shape.items())


def _mesh(sizes: dict[str, int]) -> Mesh:
    """The mesh over the first devices it needs (all of them for a -1 axis)."""
    devices = jax.devices()
    fixed = abs(sizes["data"] * sizes["fsdp"] * sizes["tensor"])
    if -1 not in sizes.values():
        if fixed > len(devices):
            raise BenchTrainError(
                f"mesh {sizes} needs {fixed} devices, {len(devices)} {devices[0].platform} devices exist; on CPU "
                f"start with XLA_FLAGS=--xla_force_host_platform_device_count={fixed} (`mvrag bench train` does)")
        devices = devices[:fixed]
    return sharding.make_mesh(**sizes, devices=devices)


def _check_train_config(cfg: Any) -> None:
    if not all(block in cfg for block in ("train", "data", "mesh")):
        raise BenchTrainError("bench train needs a train config (train, data and mesh blocks); pass e.g. "
                              "--config configs/train.py:size=tiny")


def _config(cfg: Any, mesh: Mesh, batch: int) -> Any:
    """`cfg` for one run: this mesh, `batch` objects per step fed by this one process, weights from somewhere."""
    _check_train_config(cfg)
    shards = mesh.shape["data"] * mesh.shape["fsdp"] * microbatches_of(cfg)
    if batch < 1 or batch % shards:
        raise BenchTrainError(f"batch {batch} is not a positive multiple of data*fsdp*train.microbatches={shards} "
                              f"of mesh {mesh_label(mesh)}; pass --batch as a multiple of {shards}")
    cfg = copy.deepcopy(cfg)
    cfg.mesh.update(**dict(mesh.shape))
    cfg.train.batch_size = cfg.data.batch_size = batch
    if not str(cfg.train.init):
        cfg.train.init = "random"  # size=full leaves it unset; a benchmark needs no trained weights
    return cfg


@contextlib.contextmanager
def count_compiles() -> Iterator[dict[str, int]]:
    """Counts XLA compiles and persistent-cache hits while the block runs (jax.monitoring events)."""
    counts = {"compiles": 0, "cache_hits": 0}

    def on_duration(event: str, duration_secs: float, **_: Any) -> None:
        counts["compiles"] += event == COMPILE_EVENT

    def on_event(event: str, **_: Any) -> None:
        counts["cache_hits"] += event == CACHE_HIT_EVENT

    jax.monitoring.register_event_duration_secs_listener(on_duration)
    jax.monitoring.register_event_listener(on_event)
    try:
        yield counts
    finally:
        jax.monitoring.unregister_event_duration_listener(on_duration)
        jax.monitoring.unregister_event_listener(on_event)


def _peak_bytes(mesh: Mesh) -> int | None:
    """Peak device memory in use (GPU/TPU report it; CPU does not)."""
    stats = mesh.devices.flat[0].memory_stats()
    return None if not stats or "peak_bytes_in_use" not in stats else int(stats["peak_bytes_in_use"])


def time_steps(trainer: Trainer, cfg: Any, state: Any, steps: int, warmup: int, seed: int, label: str
               ) -> tuple[Any, dict[str, Any]]:
    """Compile `trainer`'s step, then run it warmup + steps times on a synthetic batch; (new state, figures).

    `state` is donated: use the returned one. Raises whatever the backend raises (an out-of-memory error included).
    """
    with count_compiles() as counts:
        programs = trainer.compile_programs()  # "train", or "encode" + "train" with train.encoders="separate"
    compiled = step_of(programs)
    batch = to_global(host_batch_example(cfg, seed), trainer.batch_sharding)
    rng = jax.random.key(seed)
    times, loss = [], None
    with count_compiles() as recompiles, tqdm(total=warmup + steps, desc=f"train step {label}", unit="step",
                                              leave=False, file=sys.stderr) as bar:
        for i in range(warmup + steps):
            begin = time.perf_counter()
            state, metrics = compiled(state, batch, rng)
            jax.block_until_ready((state, metrics))
            if i >= warmup:
                times.append(time.perf_counter() - begin)
            bar.update()
        loss = float(metrics["loss"])
    b, views = int(cfg.train.batch_size), int(cfg.data.num_views)
    median = statistics.median(times)
    return state, {
        "compile_s": sum(seconds for _, seconds in programs.values()), "compile_cache_hit": counts["cache_hits"] > 0,
        "step_s": median, "step_min_s": min(times), "step_max_s": max(times),
        "objects_per_s": b / median, "views_per_s": b * views / median,
        "compiles_during_steps": recompiles["compiles"], "final_loss": loss,
        "memory": {name: compiled_memory(program) for name, (program, _) in programs.items()},
        "peak_bytes": _peak_bytes(trainer.mesh),
    }


def bench_mesh(cfg: Any, sizes: dict[str, int], batch: int | None = None, steps: int = 5, warmup: int = 1,
               seed: int = 0) -> tuple[str, dict[str, Any]]:
    """(mesh label, figures) of one mesh: init, compile and step times at `batch` objects (default
    cfg.train.batch_size)."""
    mesh = _mesh(sizes)
    cfg = _config(cfg, mesh, int(cfg.train.batch_size) if batch is None else batch)
    trainer = make_trainer(cfg, mesh)
    start = time.perf_counter()
    state = jax.block_until_ready(trainer.init(jax.random.key(int(cfg.train.seed))))
    init_s = time.perf_counter() - start
    state, figures = time_steps(trainer, cfg, state, steps, warmup, seed, mesh_label(mesh))
    del state
    return mesh_label(mesh), {"devices": mesh.size, "batch_size": int(cfg.train.batch_size), "init_s": init_s,
                              **figures}


def _settings(cfg: Any, platform: str) -> dict[str, Any]:
    """What the figures depend on besides the mesh and batch."""
    return {"backend": jax.default_backend(), "device": jax.devices()[0].device_kind,
            "local_devices": jax.local_device_count(), "dtype": str(cfg.runtime.dtype),
            "remat": str(cfg.runtime.remat), "attention": resolve_kernel(str(cfg.runtime.attention), platform),
            "matmul_precision": str(cfg.runtime.matmul_precision), "trainable": str(cfg.train.trainable),
            "frozen_dtype": str(cfg.train.get("frozen_dtype", "float32")),
            "encoders": str(cfg.train.get("encoders", "in_step")),
            "num_views": int(cfg.data.num_views), "image_size": int(cfg.data.image_size),
            "num_retrieved": int(cfg.data.num_retrieved), "retrieved_size": int(cfg.data.retrieved_size)}


def bench_train(cfg: Any, meshes: Sequence[str] | None = None, batch: int | None = None, steps: int = 5,
                warmup: int = 1, seed: int = 0) -> dict[str, Any]:
    """Train-step figures of config `cfg` (configs/train.py) on each mesh (default: cfg.mesh); a JSON-able dict
    whose "meshes" maps each mesh's label (data=2,fsdp=4,tensor=1) to its figures."""
    if steps < 1 or warmup < 0:
        raise BenchTrainError(f"bench train needs steps >= 1 and warmup >= 0, got steps={steps} warmup={warmup}")
    runs = {}
    for mesh_sizes in _meshes(cfg, meshes):
        label, figures = bench_mesh(cfg, mesh_sizes, batch, steps, warmup, seed)
        runs[label] = figures
        print(f"bench train {label}: compile {figures['compile_s']:.1f} s, step {figures['step_s']:.3f} s, "
              f"{figures['objects_per_s']:.2f} objects/s", file=sys.stderr, flush=True)
    return {"component": "train", **_settings(cfg, jax.devices()[0].platform), "steps": steps, "warmup": warmup,
            "meshes": runs}


# ---- the largest batch on one accelerator --------------------------------------------------------------------------
def is_out_of_memory(error: BaseException) -> bool:
    """XLA's out-of-memory errors (at compile or at run time) carry RESOURCE_EXHAUSTED / "out of memory"."""
    return any(marker in str(error) for marker in _OOM_MARKERS)


def search_max_batch(try_batch: Callable[[int], dict], shards: int, max_batch: int,
                     on_probe: Callable[[dict], None] | None = None) -> dict[str, Any]:
    """Largest batch (a multiple of `shards`, <= max_batch) for which `try_batch(batch)` returns its figures instead
    of raising an out-of-memory error (other errors propagate). Doubling, then bisection (plan.largest_fitting)."""
    if max_batch < shards:
        raise BenchTrainError(f"max_batch {max_batch} is below data*fsdp={shards}; raise --max_batch")
    probes, figures = [], {}

    def fits(units: int) -> bool:
        try:
            figures[units] = try_batch(units * shards)
        except Exception as e:  # only an out-of-memory answer ends the probe; anything else is a real failure
            if not is_out_of_memory(e):
                raise
        probes.append({"batch": units * shards, "fits": units in figures})
        if on_probe is not None:
            on_probe(probes[-1])
        return units in figures

    good = largest_fitting(fits, max_batch // shards)
    return {"max_batch": good * shards, "limit_reached": good == max_batch // shards, "probes": probes,
            "figures": figures.get(good)}


def find_max_batch(cfg: Any, meshes: Sequence[str] | None = None, max_batch: int = 1024, steps: int = 3,
                   warmup: int = 1, seed: int = 0) -> dict[str, Any]:
    """The largest global batch whose train step runs on the first of `meshes` (default: cfg.mesh) of this
    machine's accelerators, and its figures.

    For a GPU/TPU machine (CPU has no memory limit to find). The state does not depend on the batch, so it is built
    once and carried from probe to probe; a probe that ran out of memory after the state was donated rebuilds it.
    """
    if jax.default_backend() == "cpu":
        raise BenchTrainError("--find_max_batch needs a GPU or TPU (CPU memory has no limit to find); for a TPU "
                              "slice you do not have, use `mvrag plan --find_max_batch`")
    mesh_ = _mesh(_meshes(cfg, meshes)[0])
    shards = mesh_.shape["data"] * mesh_.shape["fsdp"] * microbatches_of(cfg)
    held = {}

    def try_batch(batch: int) -> dict:
        run_cfg = _config(cfg, mesh_, batch)
        trainer = make_trainer(run_cfg, mesh_)
        if "state" not in held or any(leaf.is_deleted() for leaf in jax.tree.leaves(held["state"])):
            held.pop("state", None)  # drop a donated husk (a probe that failed mid-run) before allocating anew
            held["state"] = trainer.init(jax.random.key(int(run_cfg.train.seed)))
        held["state"], figures = time_steps(trainer, run_cfg, held["state"], steps, warmup, seed, f"batch {batch}")
        return {"batch_size": batch, **figures}

    on_probe = lambda p: print(f"batch {p['batch']}: {'fits' if p['fits'] else 'out of memory'}", file=sys.stderr,
                               flush=True)
    result = search_max_batch(try_batch, shards, max_batch, on_probe)
    return {"component": "train_max_batch", **_settings(cfg, jax.devices()[0].platform),
            "mesh": mesh_label(mesh_), **result}
