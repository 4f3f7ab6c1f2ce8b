"""Ahead-of-time plans: compile the train step and the sampler for a target slice from shapes alone, and report.

    report = plan(cfg, "v5e:2x4", {"data": 1, "fsdp": 8}, batch=24)      # no weights, no TPU needed
    search = find_max_batch(cfg, "v5e:2x4", {"data": 1, "fsdp": 8})      # largest global batch that fits
    print(format_report(report))

Every input is a `ShapeDtypeStruct` carrying its sharding on a mesh of the target's devices (compile-only TPU
devices from libtpu, or fake CPU devices), so nothing is allocated. The report gives, per chip: memory from
`compiled.memory_analysis()` (arguments, outputs, temporaries, generated code; total against the chip's HBM),
FLOPs per step from `compiled.cost_analysis()`, lower and compile seconds, and the step time at 40 % of the chip's
peak bf16 FLOP/s.

Several slices (`parse_topology("v5e:2x4", num_slices=2)`, mesh `{"dcn_data": 2, "data": 1, "fsdp": 8}`): libtpu
describes the multislice target, the mesh is the hybrid one (sharding.make_mesh), and each program's report adds its
DCN traffic (train/dcn.py: the collectives whose replica groups cross slices, bytes per chip per call) and the
seconds that takes at `dcn_gbps` Gbit/s of DCN per host, on top of the compute estimate (no overlap assumed).

Reports are cached as JSON (default ~/.cache/mvrag_jax/plan/), keyed by config, topology, mesh, batch, programs,
the jax/jaxlib/flax/libtpu versions and a hash of the mvrag_jax sources: JAX's persistent compilation cache cannot
serve compile-only TPU devices (entries are written but never read back), so a repeated plan would compile again.
"""

import copy
import hashlib
import importlib.metadata
import json
import os
import pathlib
import re
import tempfile
import time
from typing import Any, Callable, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax.sharding import NamedSharding, PartitionSpec

from mvrag_jax import sharding
from mvrag_jax.diffusion.ddim import DDIMSchedule
from mvrag_jax.diffusion.sample import sample_jitted
from mvrag_jax.models.unet import CONTEXT_LENGTH, UNetConfig, init_params
from mvrag_jax.train import dcn
from mvrag_jax.train.topology import GIB, Topology, parse_topology, topology_devices
from mvrag_jax.train.trainer import (ProgramDoesNotFit, compile_effort_of, make_trainer, microbatches_of,
                                     schedule_of)

from mvrag_jax.errors import MvragError

MFU = 0.4                        # fraction of peak bf16 FLOP/s assumed by the projected step time
SAMPLE_STEPS = 50                # DDIM steps of the sampler program (the official default)
PROGRAMS = ("train", "sample")
# DCN bandwidth per TPU VM host assumed by the projected multislice step time (Gbit/s; `mvrag plan --dcn_gbps`):
# an assumption to replace with your network's figure, not a measured one.
DEFAULT_DCN_GBPS = 100.0
DEFAULT_CACHE_DIR = "~/.cache/mvrag_jax/plan"
_SOURCE_ROOT = pathlib.Path(__file__).resolve().parents[1]  # mvrag_jax/
_MEMORY_FIELDS = {"argument_bytes": "argument_size_in_bytes", "output_bytes": "output_size_in_bytes",
                  "alias_bytes": "alias_size_in_bytes", "temp_bytes": "temp_size_in_bytes",
                  "generated_code_bytes": "generated_code_size_in_bytes"}


class PlanError(MvragError, ValueError):
    """A plan request that cannot be compiled as asked (mesh, batch or program names)."""


# ---- targets -------------------------------------------------------------------------------------------------------
def parse_mesh(text: str, rest: str | None = "fsdp") -> dict[str, int]:
    """`data=1,fsdp=8[,tensor=1]` -> sizes; missing axes are 1 except `rest`, which takes the remaining devices (-1)
    unless given (rest=None: missing axes are all 1). `dcn_data=2,dcn_fsdp=1` split several slices (multislice);
    data/fsdp/tensor are then the sizes inside one slice."""
    sizes = {"data": 1, "fsdp": 1, "tensor": 1, **({} if rest is None else {rest: -1})}
    names = sharding.MESH_AXES + tuple(sharding.DCN_AXES)
    for item in filter(None, text.replace(" ", "").split(",")):
        name, sep, value = item.partition("=")
        if not sep or name not in names or not value.lstrip("-").isdigit():
            raise PlanError(f"mesh {text!r}: expected name=size items with names {', '.join(names)}, "
                            "e.g. data=1,fsdp=8,tensor=1 (or dcn_data=2,data=1,fsdp=8 over two slices)")
        sizes[name] = int(value)
    return sizes


def _with_slices(topology: Topology, mesh_sizes: dict[str, int]) -> dict[str, int]:
    """Several slices and no DCN split given: data parallel across them (dcn_data = slices), MaxText's default."""
    if topology.num_slices > 1 and all(int(mesh_sizes.get(k, 1)) == 1 for k in sharding.DCN_AXES):
        return {**mesh_sizes, "dcn_data": topology.num_slices}
    return dict(mesh_sizes)


def make_target_mesh(topology: Topology, mesh_sizes: dict[str, int]) -> jax.sharding.Mesh:
    """The (data, fsdp, tensor) mesh over the target topology's devices; the hybrid mesh over several slices."""
    sizes = _with_slices(topology, mesh_sizes)
    dcn_sizes = [int(sizes.get(k, 1)) for k in sharding.DCN_AXES]
    dcn_product = abs(dcn_sizes[0] * dcn_sizes[1])
    if -1 not in dcn_sizes and dcn_product != topology.num_slices:
        raise PlanError(f"mesh dcn_data={sizes.get('dcn_data', 1)} x dcn_fsdp={sizes.get('dcn_fsdp', 1)} needs "
                        f"{abs(dcn_product)} slices, the target has {topology.num_slices}; pass --num_slices "
                        f"{abs(dcn_product)} or change the DCN sizes")
    return sharding.make_mesh(**sizes, devices=topology_devices(topology))


def _batch_multiple(mesh: jax.sharding.Mesh, cfg: Any) -> int:
    """The step's global batch must be a multiple of this: data x fsdp (the batch axis, sharding.BATCH) x
    train.microbatches (each device's objects split into that many pieces)."""
    return mesh.shape["data"] * mesh.shape["fsdp"] * microbatches_of(cfg)


def _check_batch(batch: int, mesh: jax.sharding.Mesh, cfg: Any) -> None:
    multiple = _batch_multiple(mesh, cfg)
    if batch < 1 or batch % multiple:
        raise PlanError(f"batch {batch} is not a positive multiple of data*fsdp*train.microbatches={multiple}; pass "
                        f"--batch as a multiple of {multiple}")


def _rules(cfg: Any) -> tuple:
    return sharding.make_rules(tuple(cfg.get("sharding_rules", ())))


# ---- programs ------------------------------------------------------------------------------------------------------
def _abstract(shape: Sequence[int], dtype: Any, mesh: jax.sharding.Mesh, spec: PartitionSpec) -> jax.ShapeDtypeStruct:
    return jax.ShapeDtypeStruct(tuple(shape), dtype, sharding=NamedSharding(mesh, spec))


def _abstract_unet(cfg: Any, mesh: jax.sharding.Mesh) -> tuple[UNetConfig, Any]:
    """The UNet config and its params as sharded ShapeDtypeStructs (sharding.abstract_state: no allocation)."""
    config = UNetConfig.from_config(cfg)
    key = jax.eval_shape(jax.random.key, 0)  # abstract: nothing may execute on a compile-only mesh
    shapes, shardings = sharding.abstract_state(init_params, mesh, _rules(cfg), config, key)
    return config, jax.tree.map(lambda s, sh: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sh), shapes, shardings)


def _train_programs(cfg: Any, mesh: jax.sharding.Mesh, batch: int) -> dict[str, tuple[Any, float]]:
    """The real train step (train/trainer.py: optimizer update, donated state, frozen encoders in-graph or, with
    train.encoders="separate", as the program "train_encode" before it)."""
    cfg = copy.deepcopy(cfg)
    cfg.train.batch_size = cfg.data.batch_size = batch  # the plan's one process feeds the whole global batch
    if not str(cfg.train.init):
        cfg.train.init = "random"  # where weights come from does not change the compiled step; plans load none
    programs = make_trainer(cfg, mesh).compile_programs()
    return {_train_program_name(name): program for name, program in programs.items()}


def _train_program_name(trainer_name: str) -> str:
    return "train" if trainer_name == "train" else f"train_{trainer_name}"


def _sample_program(cfg: Any, mesh: jax.sharding.Mesh, batch: int) -> dict[str, tuple[Any, float]]:
    """The jitted DDIM + CFG loop (diffusion/sample.py) for one object, SAMPLE_STEPS steps, params sharded."""
    del batch  # the sampler generates one object (num_frames views) per call
    config, params = _abstract_unet(cfg, mesh)
    views, side = config.num_frames, config.image_size
    tokens = cfg.model.num_retrieved * cfg.model.resampler.num_queries
    train_timesteps = schedule_of(cfg).num_train_timesteps if "train" in cfg else DDIMSchedule().num_train_timesteps
    replicated = lambda shape, dtype=jnp.float32: _abstract(shape, dtype, mesh, PartitionSpec())
    # sample_loop takes a leading object axis (here one object): latents [1, views, ...], embeds [1, 2, L, ctx], ...
    camera = None if config.camera_dim is None else replicated((1, views, config.camera_dim))
    args = (config, params, replicated((train_timesteps,)), replicated(()), replicated((SAMPLE_STEPS,), jnp.int32),
            replicated((SAMPLE_STEPS,), jnp.int32), replicated((1, views, side, side, config.in_channels)),
            replicated((1, 2, CONTEXT_LENGTH, config.context_dim)), camera,
            replicated((1, 2, tokens, config.context_dim)), replicated((1,)), replicated(()))
    start = time.perf_counter()
    with jax.set_mesh(mesh), nn.logical_axis_rules(_rules(cfg)), \
            jax.default_matmul_precision(str(cfg.runtime.matmul_precision)):
        lowered = sample_jitted.lower(*args, return_trajectory=False)
    return {"sample": (lowered.compile(), time.perf_counter() - start)}


# program -> build: (cfg, mesh, batch) -> {compiled program name: (compiled, lower + compile seconds)}
_BUILDERS: dict[str, Callable[[Any, jax.sharding.Mesh, int], dict[str, tuple[Any, float]]]] = {
    "train": _train_programs,
    "sample": _sample_program,
}


def _loop_steps(program: str, cfg: Any) -> int:
    """Trips of the loop that holds (nearly) all of a program's work: XLA counts a loop body's FLOPs once. The
    sampler is one lax.scan over its steps; the update program with train.microbatches > 1 one over the pieces."""
    if program == "sample":
        return SAMPLE_STEPS
    return microbatches_of(cfg) if program == "train" else 1


# ---- compile and measure -------------------------------------------------------------------------------------------
def _memory(compiled: Any) -> dict[str, int]:
    """Per-chip bytes of the compiled program; total = arguments + outputs - aliased (donated) + temps + code."""
    stats = compiled.memory_analysis()
    if stats is None:
        raise PlanError("this backend reports no memory analysis for compiled programs; plan for a TPU topology")
    memory = {name: int(getattr(stats, field, 0)) for name, field in _MEMORY_FIELDS.items()}
    memory["total_bytes"] = (memory["argument_bytes"] + memory["output_bytes"] - memory["alias_bytes"]
                             + memory["temp_bytes"] + memory["generated_code_bytes"])
    return memory


def _flops(compiled: Any) -> float:
    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, (list, tuple)) else cost  # older JAX: one dict per program
    return float((cost or {}).get("flops", 0.0))


def program_figures(compiled: Any, seconds: float, topology: Topology, loop_steps: int = 1,
                    mesh: jax.sharding.Mesh | None = None) -> dict[str, Any]:
    """Per-chip figures on `topology` of one compiled program that took `seconds` to lower and compile.

    XLA's cost analysis counts a loop body once, so a program that is one `lax.scan` of `loop_steps` steps has its
    FLOPs multiplied by `loop_steps` (the work outside the loop is negligible next to the UNet calls inside).
    Over several slices (and given the program's `mesh`) "dcn" holds its DCN traffic (train/dcn.py).
    """
    memory, flops = _memory(compiled), _flops(compiled) * loop_steps
    hbm, peak = topology.hbm_bytes, topology.peak_flops
    extra = {}
    if topology.num_slices > 1 and mesh is not None:
        extra["dcn"] = dcn.dcn_traffic(compiled.as_text(), mesh, topology.num_slices)
    return {**extra,
        "memory": memory,
        "memory_gib": round(memory["total_bytes"] / GIB, 3),
        "hbm_fraction": None if hbm is None else round(memory["total_bytes"] / hbm, 4),
        "fits": None if hbm is None else memory["total_bytes"] <= hbm,
        "flops_per_chip": flops,
        "flops_total": flops * topology.num_devices,
        "projected_step_s": None if peak is None else flops / (MFU * peak),
        "compile_s": round(seconds, 2),
    }


def _required_gib(message: str) -> float | None:
    """XLA's "... required for HLO temporaries (16.11G) exceeds available HBM ..." -> 16.11 (a lower bound of the
    program's need: temporaries only), else None."""
    found = re.search(r"\(([\d.]+)G\) exceeds", message)
    return float(found.group(1)) if found else None


def _step_peak(programs: dict[str, Any]) -> int:
    """Per-chip peak bytes of a train step: its one program's total, or, run as two programs, the larger of: the
    update program's total (its arguments hold the whole train state, encoder weights included) and, while the
    encode program runs, its total + the state it does not read (update arguments - encode arguments; an upper
    bound)."""
    train = programs["train"]["memory"]
    if "train_encode" not in programs:
        return train["total_bytes"]
    encode = programs["train_encode"]["memory"]
    during_encode = encode["total_bytes"] + max(0, train["argument_bytes"] - encode["argument_bytes"])
    return max(train["total_bytes"], during_encode)


# ---- the report cache ----------------------------------------------------------------------------------------------
def _version(package: str) -> str | None:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return None


def source_hash() -> str:
    """sha256 over the mvrag_jax sources (path and content of every .py file): model or step code changed -> new key."""
    digest = hashlib.sha256()
    for path in sorted(_SOURCE_ROOT.rglob("*.py")):
        digest.update(str(path.relative_to(_SOURCE_ROOT)).encode() + b"\0" + path.read_bytes() + b"\0")
    return digest.hexdigest()


def cache_key(cfg: Any, topology: Topology, mesh_sizes: dict[str, int], batch: int, programs: Sequence[str]) -> str:
    """Everything a plan's figures depend on, hashed."""
    key = {
        "config": json.loads(cfg.to_json_best_effort(sort_keys=True)) if hasattr(cfg, "to_json_best_effort") else cfg,
        "topology": topology.name, "mesh": mesh_sizes, "batch": batch, "programs": list(programs),
        "versions": {p: _version(p) for p in ("jax", "jaxlib", "flax", "libtpu")},
        "source": source_hash(),
    }
    return hashlib.sha256(json.dumps(key, sort_keys=True, default=str).encode()).hexdigest()[:32]


def _cache_path(cache_dir: str | os.PathLike | None, key: str) -> pathlib.Path | None:
    return None if cache_dir is None else pathlib.Path(os.path.expanduser(cache_dir)) / f"{key}.json"


def _load(path: pathlib.Path | None) -> dict | None:
    if path is None or not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None  # a damaged entry is recompiled and overwritten


def _store(path: pathlib.Path | None, report: dict) -> None:
    """Atomic write: a temp file in the cache folder renamed over the entry."""
    if path is None:
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile("w", dir=path.parent, suffix=".tmp", delete=False) as f:
        json.dump(report, f, indent=1, sort_keys=True)
    os.replace(f.name, path)


# ---- plans ---------------------------------------------------------------------------------------------------------
def plan(cfg: Any, topology: str | Topology, mesh_sizes: dict[str, int], batch: int,
         programs: Sequence[str] = PROGRAMS, cache_dir: str | os.PathLike | None = DEFAULT_CACHE_DIR,
         on_stage: Callable[[str], None] | None = None, dcn_gbps: float = DEFAULT_DCN_GBPS) -> dict[str, Any]:
    """Compile `programs` of experiment config `cfg` for `topology` with global batch `batch`; the report dict.

    `cache_dir=None` disables the report cache. A cached report is returned with "cached": True. `on_stage(text)`
    hears each stage as it starts (a full-size compile takes minutes: `mvrag plan` prints them). Over several
    slices each program's "dcn" gets "seconds" at `dcn_gbps` Gbit/s per host (applied after the cache: the bytes
    are cached, the bandwidth is not part of the key).
    """
    on_stage = on_stage or (lambda text: None)
    topology = parse_topology(topology) if isinstance(topology, str) else topology
    unknown = sorted(set(programs) - set(_BUILDERS))
    if unknown or not programs:
        raise PlanError(f"unknown programs {unknown or list(programs)}; choose from {', '.join(_BUILDERS)}")
    path = _cache_path(cache_dir, cache_key(cfg, topology, mesh_sizes, batch, programs))
    cached = _load(path)
    if cached is not None:
        on_stage(f"batch {batch}: cached report {path}")
        return _with_dcn_seconds({**cached, "cached": True}, topology, dcn_gbps)
    on_stage(f"batch {batch}: {topology.name} devices (mesh {mesh_sizes})")
    mesh = make_target_mesh(topology, mesh_sizes)
    _check_batch(batch, mesh, cfg)
    report = {
        "topology": topology.name,
        "accelerator_type": topology.accelerator_type,
        "devices": topology.num_devices,
        "num_slices": topology.num_slices,
        "device_kind": mesh.devices.flat[0].device_kind,
        "mesh": dict(mesh.shape),
        "dcn_mesh": {k: v for k, v in _with_slices(topology, mesh_sizes).items() if k in sharding.DCN_AXES},
        "batch": batch,
        "dtype": cfg.runtime.dtype,
        "remat": cfg.runtime.remat,
        "microbatches": microbatches_of(cfg),
        "compile_effort": compile_effort_of(cfg),
        "attention": cfg.runtime.get("attention"),
        "hbm_per_chip_bytes": topology.hbm_bytes,
        "peak_flops_per_chip": topology.peak_flops,
        "mfu_assumed": MFU,
        "versions": {p: _version(p) for p in ("jax", "jaxlib", "libtpu")},
        "programs": {},
    }
    for name in programs:
        parts = ("encode, then train" if name == "train" and str(cfg.train.get("encoders", "")) == "separate"
                 else name) if "train" in cfg else name
        on_stage(f"batch {batch}: lowering and compiling the {name} program ({parts}) ...")
        started = time.perf_counter()
        try:
            built = _BUILDERS[name](cfg, mesh, batch)
        except ProgramDoesNotFit as e:  # XLA refuses programs over the chip's HBM: a plan answer, not a crash
            program = _train_program_name(e.program)
            report["programs"][program] = {"fits": False, "out_of_memory": e.message, "compile_s": round(e.seconds, 2),
                                           "memory_gib": _required_gib(e.message)}
            continue
        for program, (compiled, seconds) in built.items():
            report["programs"][program] = program_figures(compiled, seconds, topology, _loop_steps(program, cfg),
                                                          mesh)
        on_stage(f"batch {batch}: {name} compiled in {time.perf_counter() - started:.1f} s")
    failed = [p for p in report["programs"].values() if "out_of_memory" in p]
    if failed:
        report["train_peak_gib"], report["train_fits"] = failed[0]["memory_gib"], False
    elif "train" in report["programs"]:  # the step's peak over its programs, and whether that fits the chip
        peak = _step_peak(report["programs"])
        report["train_peak_gib"] = round(peak / GIB, 3)
        report["train_fits"] = None if topology.hbm_bytes is None else peak <= topology.hbm_bytes
    _store(path, report)
    return _with_dcn_seconds({**report, "cached": False}, topology, dcn_gbps)


def _with_dcn_seconds(report: dict[str, Any], topology: Topology, dcn_gbps: float) -> dict[str, Any]:
    """Each program's DCN seconds per call at `dcn_gbps` per host, and its step estimate with them (no overlap)."""
    if dcn_gbps <= 0:
        raise PlanError(f"dcn_gbps {dcn_gbps}: give the DCN bandwidth per host in Gbit/s, e.g. --dcn_gbps 100")
    report = copy.deepcopy(report)
    for p in report["programs"].values():
        if "dcn" in p:
            p["dcn"]["seconds"] = dcn.dcn_seconds(p["dcn"], topology.chips_per_host, dcn_gbps)
            p["dcn"]["gbps_per_host"], p["dcn"]["chips_per_host"] = dcn_gbps, topology.chips_per_host
            if p.get("projected_step_s") is not None:
                p["projected_step_with_dcn_s"] = p["projected_step_s"] + p["dcn"]["seconds"]
    return report


def largest_fitting(fits: Callable[[int], bool], limit: int) -> int:
    """Largest n in 1..limit with fits(n) (0 if none), for a `fits` that holds up to some n and fails above it.

    Doubles from 1 until a miss (or `limit`), then bisects between the last fit and the first miss; each call of
    `fits` is a compile (or a run), so the search makes O(log limit) of them.
    """
    good, bad = 0, None
    units = 1
    while bad is None and good < limit:  # doubling: 1, 2, 4, ...
        if fits(units):
            good, units = units, min(2 * units, limit)
        else:
            bad = units
    while bad is not None and bad - good > 1 and good:  # bisection between the last fit and the first miss
        mid = (good + bad) // 2
        good, bad = (mid, bad) if fits(mid) else (good, mid)
    return good


def find_max_batch(cfg: Any, topology: str | Topology, mesh_sizes: dict[str, int], max_batch: int = 4096,
                   cache_dir: str | os.PathLike | None = DEFAULT_CACHE_DIR,
                   on_probe: Callable[[dict], None] | None = None,
                   on_stage: Callable[[str], None] | None = None,
                   dcn_gbps: float = DEFAULT_DCN_GBPS) -> dict[str, Any]:
    """Largest global batch (a multiple of data*fsdp*microbatches, <= max_batch) whose train step fits the chip's
    HBM.

    Doubles from one object per data-parallel shard until a compile does not fit, then bisects between the last fit
    and the first miss. Each probe is a full `plan` of the train program (cached like one); `on_probe` sees each
    probe's summary as it finishes. The result holds the probes and the plan report of the largest fitting batch.
    """
    topology = parse_topology(topology) if isinstance(topology, str) else topology
    if topology.hbm_bytes is None:
        raise PlanError(f"{topology.name} has no HBM size to fit against; search on a TPU topology (e.g. v5e:2x4)")
    shards = _batch_multiple(make_target_mesh(topology, mesh_sizes), cfg)
    limit = max_batch // shards
    if limit < 1:
        raise PlanError(f"max_batch {max_batch} is below data*fsdp*microbatches={shards}; raise --max_batch")
    probes, reports = [], {}

    def fits(units: int) -> bool:
        report = plan(cfg, topology, mesh_sizes, units * shards, programs=("train",), cache_dir=cache_dir,
                      on_stage=on_stage, dcn_gbps=dcn_gbps)
        reports[units] = report
        compile_s = sum(p["compile_s"] for name, p in report["programs"].items() if name.startswith("train"))
        probes.append({"batch": units * shards, "fits": report["train_fits"], "memory_gib": report["train_peak_gib"],
                       "compile_s": round(compile_s, 2), "cached": report["cached"]})
        if on_probe is not None:
            on_probe(probes[-1])
        return report["train_fits"]

    good = largest_fitting(fits, limit)
    return {"topology": topology.name, "mesh": mesh_sizes, "max_batch": good * shards, "batch_multiple": shards,
            "limit_reached": good == limit, "probes": probes, "plan": reports.get(good)}


# ---- text output ---------------------------------------------------------------------------------------------------
def format_report(report: dict[str, Any]) -> str:
    """A short human-readable table of a `plan` report (per chip)."""
    hbm = report["hbm_per_chip_bytes"]
    lines = [f"plan: {report['topology']} ({report['devices']} x {report['device_kind']}), mesh "
             f"{','.join(f'{k}={v}' for k, v in report['mesh'].items())}"
             + ("" if report.get("num_slices", 1) == 1 else
                f" over {report['num_slices']} slices ({','.join(f'{k}={v}' for k, v in report['dcn_mesh'].items())})")
             + f", global batch {report['batch']}, "
             f"{report['dtype']}, remat={report['remat']}, attention={report.get('attention')}"
             + (f", {report['microbatches']} microbatches" if report.get("microbatches", 1) > 1 else "")
             + (f", compile effort {report['compile_effort']:g}" if report.get("compile_effort") else "")
             + ("  [cached]" if report.get("cached") else "")]
    for name, p in report["programs"].items():
        if "out_of_memory" in p:
            lines.append(f"  {name}: DOES NOT FIT: {p['out_of_memory']} (compile {p['compile_s']} s)")
            continue
        m = {k: v / GIB for k, v in p["memory"].items()}
        budget = "" if hbm is None else (f" of {hbm / GIB:.0f} GiB HBM ({100 * p['hbm_fraction']:.1f} %): "
                                         f"{'fits' if p['fits'] else 'DOES NOT FIT'}")
        step = "" if p["projected_step_s"] is None else \
            f", projected step {p['projected_step_s'] * 1e3:.1f} ms at {100 * report['mfu_assumed']:.0f} % of peak"
        lines += [f"  {name}: per chip {m['total_bytes']:.3f} GiB{budget}",
                  f"    arguments {m['argument_bytes']:.3f}, outputs {m['output_bytes']:.3f}, aliased "
                  f"{m['alias_bytes']:.3f}, temporaries {m['temp_bytes']:.3f}, "
                  f"code {m['generated_code_bytes']:.3f} GiB",
                  f"    {p['flops_per_chip'] / 1e12:.3f} TFLOP per chip per call{step}; lower + compile "
                  f"{p['compile_s']} s"]
        if "dcn" in p:
            d = p["dcn"]
            lines.append(f"    DCN: {d['dcn_bytes_per_chip'] / 2 ** 20:.2f} MiB per chip per call in "
                         f"{d['cross_slice_collectives']} cross-slice collectives (of {d['collectives_total']}); "
                         f"{d['seconds'] * 1e3:.1f} ms at {d['gbps_per_host']:g} Gbit/s per host of "
                         f"{d['chips_per_host']} chips" + ("" if p.get("projected_step_with_dcn_s") is None else
                         f"; step with DCN unoverlapped {p['projected_step_with_dcn_s'] * 1e3:.1f} ms"))
    if "train_encode" in report["programs"] and report["train_fits"] is not False:
        lines.append(f"  train step (encode + train programs): peak {report['train_peak_gib']:.3f} GiB per chip"
                     + ("" if report["train_fits"] is None else (": fits" if report["train_fits"] else
                                                                 ": DOES NOT FIT")))
    return "\n".join(lines)

