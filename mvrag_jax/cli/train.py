"""`mvrag train` (a run in a workdir, resumable) and `mvrag plan` (will the step fit a TPU slice)."""

import json
import os
import sys

from absl import flags

from mvrag_jax.cli.flags import Command, define_processes, use_cpu_collectives


def define_train(fv):
    flags.DEFINE_string("workdir", None, "Run folder: checkpoints/, metrics.jsonl, tb/, loss.png, data/. A run resumes "
                        "from its latest checkpoint.", flag_values=fv)
    flags.DEFINE_bool("allow_config_change", False, "Resume although batch, seeds, data, optimizer or numerics "
                      "differ from the checkpoint's config (each change is logged). Model and trainable-set changes "
                      "are always refused; steps, intervals and mesh may always change.", flag_values=fv)
    define_processes(fv)
    flags.DEFINE_integer("num_slices", None, "Multislice: TPU slices of the job (a queued resource with --node-count "
                         "N; launch/tpu_train.sh --num_slices N). Checked against the devices' slices; the batch "
                         "splits over them (--config.mesh.dcn_data, default N; --config.mesh.dcn_fsdp shards "
                         "parameters across slices). Default: the job's own count. On CPU: emulated slices.",
                         flag_values=fv)
    flags.mark_flags_as_required(["workdir"], flag_values=fv)


def run_train(fv, argv):
    from absl import logging
    from mvrag_jax.train import loop
    use_cpu_collectives(fv)
    if not fv.verbose:
        logging.set_verbosity(logging.INFO)
    logging.get_absl_logger().addFilter(lambda record: "/orbax/" not in record.pathname)  # per-save chatter
    flags.FLAGS.mark_as_parsed()  # grain reads absl's global flags when it starts loader worker processes
    summary = loop.launch(fv.config, fv.workdir, coordinator=fv.coordinator, num_processes=fv.num_processes,
                          process_id=fv.process_id, init_timeout_s=fv.init_timeout, multihost=fv.multihost,
                          allow_config_change=fv.allow_config_change, num_slices=fv.num_slices)
    print(json.dumps(summary), flush=True)
    return 130 if summary.get("signal") == "SIGINT" else 0  # a shell's convention for Ctrl-C


def define_plan(fv):
    flags.DEFINE_string("topology", "cpu:8", "Target slice: v5e:2x4, v4:2x2x1, v5p:2x2x2, v6e:4x4, a GCP accelerator "
                        "type (v5litepod-8, v4-8) or cpu:N (fake CPU devices). TPU targets need libtpu "
                        "(requirements-tpu.txt), not a TPU.", flag_values=fv)
    flags.DEFINE_string("mesh", None, "data=1,fsdp=8[,tensor=1]; default: the config's mesh block. Over several "
                        "slices data/fsdp/tensor are the sizes inside one slice and dcn_data/dcn_fsdp split the "
                        "slices (dcn_data=2,data=1,fsdp=8; default dcn_data=--num_slices).", flag_values=fv)
    flags.DEFINE_integer("num_slices", 1, "Slices of --topology joined over DCN (multislice; libtpu describes them, "
                         "or emulated slices for cpu:N). Each program then reports the bytes its cross-slice "
                         "collectives send per chip and their time at --dcn_gbps.", flag_values=fv)
    flags.DEFINE_float("dcn_gbps", 100.0, "DCN bandwidth per TPU VM host in Gbit/s for the projected multislice step "
                       "time (an assumption: set your network's figure).", flag_values=fv)
    flags.DEFINE_integer("batch", None, "Global batch (objects); default: config train.batch_size.", flag_values=fv)
    flags.DEFINE_list("programs", ["train", "sample"], "Programs to compile: train (the train step), sample (the "
                      "jitted DDIM + CFG loop, one object, 50 steps).", flag_values=fv)
    flags.DEFINE_bool("find_max_batch", False, "Search the largest global batch whose train step fits the chip's HBM "
                      "(doubling, then bisection; multiples of data*fsdp).", flag_values=fv)
    flags.DEFINE_integer("max_batch", 4096, "--find_max_batch: largest batch tried.", flag_values=fv)
    flags.DEFINE_bool("json", False, "Print the report as one line of JSON.", flag_values=fv)
    flags.DEFINE_string("plan_cache_dir", "~/.cache/mvrag_jax/plan", "Reports cached by config, topology, mesh, batch, "
                        "versions and source hash; 'none' disables. (The XLA compile cache is always off for plans: "
                        "it cannot serve compile-only TPU devices.)", flag_values=fv)


def _setup_plan(fv) -> None:
    """Plan-only process settings, before any backend starts: fake CPU devices or libtpu's compile-only setup."""
    import jax
    from mvrag_jax.cluster import platforms
    from mvrag_jax.train.topology import parse_topology
    topology = parse_topology(fv.topology, fv.num_slices)
    if topology.platform == "cpu":
        jax.config.update("jax_num_cpu_devices", max(topology.num_devices, 1))
    else:
        os.environ.update(platforms.compile_only_tpu_env(topology.accelerator_type))
    jax.config.update("jax_enable_compilation_cache", False)


def run_plan(fv, argv):
    from mvrag_jax import sharding
    from mvrag_jax.train import plan
    from mvrag_jax.train.topology import parse_topology
    _setup_plan(fv)
    topology = parse_topology(fv.topology, fv.num_slices)
    mesh = plan.parse_mesh(fv.mesh) if fv.mesh else sharding.mesh_sizes(fv.config.mesh)
    cache = None if fv.plan_cache_dir.lower() == "none" else fv.plan_cache_dir
    on_stage = lambda text: print(f"plan: {text}", file=sys.stderr, flush=True)  # compiles take minutes: say so
    if fv.find_max_batch:
        on_probe = lambda p: print(f"batch {p['batch']}: {p['memory_gib']} GiB per chip, "
                                   f"{'fits' if p['fits'] else 'does not fit'}", file=sys.stderr, flush=True)
        result = plan.find_max_batch(fv.config, topology, mesh, fv.max_batch, cache_dir=cache, on_probe=on_probe,
                                     on_stage=on_stage, dcn_gbps=fv.dcn_gbps)
        print(json.dumps(result) if fv.json else f"largest batch that fits: {result['max_batch']}"
              + ("" if result["plan"] is None else "\n" + plan.format_report(result["plan"])))
        return 0
    batch = fv.batch or int(fv.config.train.batch_size)
    report = plan.plan(fv.config, topology, mesh, batch, programs=fv.programs, cache_dir=cache, on_stage=on_stage,
                       dcn_gbps=fv.dcn_gbps)
    print(json.dumps(report) if fv.json else f"{plan.format_report(report)}\n{json.dumps(report)}")
    return 0


COMMANDS = (
    Command("train", "Train (or resume) a run in --workdir; SIGTERM saves and exits 0 (SIGINT: 130); one trainer "
            "per workdir (train.lock).", define_train, run_train,
            config=("train.py:size=tiny", "Train config (configs/train.py[:arg]).")),
    Command("plan", "Compile the train step and sampler for a TPU slice from shapes (no weights, no TPU): per-chip "
            "memory, FLOPs, compile time.", define_plan, run_plan,
            config=("train.py", "Train config (configs/train.py[:size=...]).")),
)
