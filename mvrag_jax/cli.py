"""`mvrag`: the command line. Each subcommand only parses flags and calls one library function.

    mvrag convert --release DIR --out CKPT_DIR
    mvrag export --ckpt CKPT_DIR|WORKDIR --out DIR [--dtype fp32|fp16|bf16]
    mvrag verify-reference --release DIR --cases DIR [--json] [--only NAME ...] [--require-all]
    mvrag bench unet --config configs/tiny.py
    mvrag data build|preview|bench --config configs/data.py:size=tiny --config.data_dir DIR
    mvrag train --config configs/train.py:size=tiny --workdir DIR [--config.train.steps=100 ...]
Run `mvrag <subcommand> --help` for its flags.
"""

import dataclasses
import json
import os
import sys
import time
from typing import Callable

from absl import flags
from ml_collections import config_flags

from mvrag_jax.convert import CheckpointError, CheckpointKeyError, ReleaseError

# Errors a user can fix from the message alone: printed without a traceback, exit code 2.
_USER_ERRORS = (CheckpointError, CheckpointKeyError, ReleaseError, FileNotFoundError, ValueError)


@dataclasses.dataclass(frozen=True)
class Command:
    name: str
    summary: str
    define: Callable[[flags.FlagValues], None]
    run: Callable[[flags.FlagValues, list[str]], int]


def _define_runtime(fv: flags.FlagValues) -> None:
    flags.DEFINE_string("compile_cache_dir", "~/.cache/mvrag_jax/xla",
                        "Persistent XLA compilation cache (reused across runs); 'none' disables it.", flag_values=fv)


def _setup_jax(fv: flags.FlagValues) -> None:
    """Process-wide JAX settings live here, at the CLI entry, and nowhere else."""
    import jax
    if fv.compile_cache_dir.lower() != "none":
        jax.config.update("jax_compilation_cache_dir", os.path.expanduser(fv.compile_cache_dir))
        jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)
    jax.config.update("jax_threefry_partitionable", True)


# ---- convert -------------------------------------------------------------------------------------------------------
def _define_convert(fv):
    flags.DEFINE_string("release", None, "Official MV-RAG release folder (holds model_index.json).", flag_values=fv)
    flags.DEFINE_string("out", None, "Output checkpoint folder (written atomically).", flag_values=fv)
    flags.DEFINE_bool("overwrite", False, "Replace --out if it exists.", flag_values=fv)
    flags.mark_flags_as_required(["release", "out"], flag_values=fv)


def _run_convert(fv, argv):
    from mvrag_jax.convert import convert_release
    out = convert_release(fv.release, fv.out, overwrite=fv.overwrite)
    print(f"wrote {out}")
    return 0


# ---- export --------------------------------------------------------------------------------------------------------
def _define_export(fv):
    flags.DEFINE_string("ckpt", None, "mvrag checkpoint folder (from `mvrag convert`), or a `mvrag train` --workdir "
                        "(its latest step, merged into the checkpoint the run started from).", flag_values=fv)
    flags.DEFINE_string("out", None, "Output release folder in the official layout (written atomically).",
                        flag_values=fv)
    flags.DEFINE_enum("dtype", "fp32", ["fp32", "fp16", "bf16"], "Stored weight dtype.", flag_values=fv)
    flags.DEFINE_bool("overwrite", False, "Replace --out if it exists.", flag_values=fv)
    flags.mark_flags_as_required(["ckpt", "out"], flag_values=fv)


def _run_export(fv, argv):
    from mvrag_jax.train.checkpoint import export
    print(f"wrote {export(fv.ckpt, fv.out, dtype=fv.dtype, overwrite=fv.overwrite)}")
    return 0


# ---- verify-reference ----------------------------------------------------------------------------------------------
def _define_verify(fv):
    flags.DEFINE_string("release", None, "Release folder the cases were computed with.", flag_values=fv)
    flags.DEFINE_string("cases", None, "Folder of reference cases (*.npz, see its README.md).", flag_values=fv)
    flags.DEFINE_bool("json", False, "Print one JSON object per case and line.", flag_values=fv)
    flags.DEFINE_multi_string("only", [], "Run only this case (repeatable).", flag_values=fv)
    flags.DEFINE_bool("require_all", False, "Also fail when a case is skipped.", flag_values=fv)
    flags.mark_flags_as_required(["release", "cases"], flag_values=fv)


def _run_verify(fv, argv):
    from mvrag_jax.verify import run_cases
    counts = {"pass": 0, "fail": 0, "skipped": 0}
    start = time.perf_counter()
    for result in run_cases(fv.release, fv.cases, only=fv.only or None):
        counts[result.status] += 1
        if fv.json:
            print(json.dumps({"case": result.case, "status": result.status, "max_abs_err": result.max_abs_err,
                              "tol": result.tol, "details": result.details}), flush=True)
        else:
            err = "" if result.max_abs_err is None else f"  max_abs_err={result.max_abs_err:.3g}"
            reason = f"  ({result.details.get('reason')})" if result.status == "skipped" else ""
            print(f"{result.status:7s} {result.case}{err}{reason}", flush=True)
    if not fv.json:  # JSON mode prints case objects only
        print(f"{counts['pass']} passed, {counts['fail']} failed, {counts['skipped']} skipped "
              f"in {time.perf_counter() - start:.1f} s (conversion and compiles included)")
    return 1 if counts["fail"] or (fv.require_all and counts["skipped"]) else 0


# ---- bench ---------------------------------------------------------------------------------------------------------
def _define_bench(fv):
    config_flags.DEFINE_config_file("config", "configs/tiny.py", "Model config (configs/*.py[:arg]).",
                                    flag_values=fv, lock_config=True)
    flags.DEFINE_integer("batch_size", 1, "Objects per call (each has num_frames views).", flag_values=fv)
    flags.DEFINE_integer("steps", 5, "Timed calls after the compile.", flag_values=fv)


def _run_bench(fv, argv):
    from mvrag_jax import bench
    targets = {"unet": bench.bench_unet}
    if len(argv) != 2 or argv[1] not in targets:
        raise ValueError(f"usage: mvrag bench {{{'|'.join(targets)}}} [--config ...]; got {argv[1:]}")
    print(json.dumps(targets[argv[1]](fv.config, batch_size=fv.batch_size, steps=fv.steps), indent=1))
    return 0


# ---- data ----------------------------------------------------------------------------------------------------------
def _define_data(fv):
    config_flags.DEFINE_config_file("config", "configs/data.py:size=tiny", "Data config (configs/data.py[:arg]).",
                                    flag_values=fv, lock_config=True)
    flags.DEFINE_list("datasets", ["mode_3d", "mode_2d"], "build: mode_3d, mode_2d, ood_eval or a dataset name.",
                      flag_values=fv)
    flags.DEFINE_string("out", "/tmp/mvrag_preview.png", "preview: PNG to write.", flag_values=fv)
    flags.DEFINE_integer("batches", 2, "preview: batches to show.", flag_values=fv)
    flags.DEFINE_list("modes", ["3d", "2d", "mixed"], "bench: modes to time.", flag_values=fv)
    flags.DEFINE_integer("steps", 20, "bench: timed batches per mode.", flag_values=fv)


def _run_data(fv, argv):
    from data_pipelines import bench, build, preview
    actions = ("build", "preview", "bench")
    if len(argv) != 2 or argv[1] not in actions:
        raise ValueError(f"usage: mvrag data {{{'|'.join(actions)}}} [--config configs/data.py:size=tiny]; "
                         f"got {argv[1:]}")
    flags.FLAGS.mark_as_parsed()  # grain reads absl's global flags when it starts loader worker processes
    if argv[1] == "build":
        print("\n".join(build.build_all(fv.config, fv.datasets)))
    elif argv[1] == "preview":
        print(f"wrote {preview.write_preview(fv.config, fv.out, fv.batches)}")
    else:
        for mode in fv.modes:
            print(json.dumps(bench.bench(fv.config, mode, fv.steps)), flush=True)
    return 0


# ---- train ---------------------------------------------------------------------------------------------------------
def _define_train(fv):
    config_flags.DEFINE_config_file("config", "configs/train.py:size=tiny", "Train config (configs/train.py[:arg]).",
                                    flag_values=fv, lock_config=True)
    flags.DEFINE_string("workdir", None, "Run folder: checkpoints/, metrics.jsonl, tb/, loss.png, data/. A run resumes "
                        "from its latest checkpoint.", flag_values=fv)
    flags.DEFINE_string("coordinator", None, "Multi-process: HOST:PORT of process 0 (omit on one host).",
                        flag_values=fv)
    flags.DEFINE_integer("num_processes", None, "Multi-process: how many processes join.", flag_values=fv)
    flags.DEFINE_integer("process_id", None, "Multi-process: this process's id, 0..num_processes-1.", flag_values=fv)
    flags.DEFINE_bool("multihost", False, "Join a Cloud TPU pod slice (coordinator, count and id auto-detected).",
                      flag_values=fv)
    flags.DEFINE_float("init_timeout", 300.0, "Seconds to wait for every process to connect before exiting with a "
                       "message naming the missing one.", flag_values=fv)
    flags.mark_flags_as_required(["workdir"], flag_values=fv)


def _run_train(fv, argv):
    import jax
    from absl import logging
    from mvrag_jax.train import loop
    if fv.num_processes and fv.num_processes > 1:  # CPU collectives between processes (tests, CPU clusters)
        jax.config.update("jax_cpu_collectives_implementation", "gloo")
    logging.set_verbosity(logging.INFO)
    logging.get_absl_logger().addFilter(lambda record: "/orbax/" not in record.pathname)  # per-save chatter
    flags.FLAGS.mark_as_parsed()  # grain reads absl's global flags when it starts loader worker processes
    summary = loop.launch(fv.config, fv.workdir, coordinator=fv.coordinator, num_processes=fv.num_processes,
                          process_id=fv.process_id, init_timeout_s=fv.init_timeout, multihost=fv.multihost)
    print(json.dumps(summary), flush=True)
    return 0


COMMANDS = {c.name: c for c in (
    Command("convert", "Convert an official PyTorch release into an mvrag checkpoint.", _define_convert, _run_convert),
    Command("export", "Write a checkpoint back in the official PyTorch release layout.", _define_export, _run_export),
    Command("verify-reference", "Check parity with the official outputs stored in a cases folder.", _define_verify,
            _run_verify),
    Command("data", "Build datasets, preview batches as a PNG, or time the loader: `mvrag data build|preview|bench`.",
            _define_data, _run_data),
    Command("bench", "Time compile, forward and forward+backward of a model: `mvrag bench unet`.", _define_bench,
            _run_bench),
    Command("train", "Train (or resume) a run in --workdir; SIGTERM saves and exits 0.", _define_train, _run_train),
)}


def _usage() -> str:
    lines = [__doc__.strip(), "", "subcommands:"]
    lines += [f"  {name:18s} {c.summary}" for name, c in COMMANDS.items()]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv if argv is None else argv)
    # transformers (used for tokenizers only) otherwise announces at import that PyTorch is absent.
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    if len(argv) < 2 or argv[1] in ("-h", "--help", "help"):
        print(_usage())
        return 0
    if argv[1] not in COMMANDS:
        print(f"mvrag: unknown subcommand {argv[1]!r}\n\n{_usage()}", file=sys.stderr)
        return 2
    command = COMMANDS[argv[1]]
    fv = flags.FlagValues()
    command.define(fv)
    _define_runtime(fv)
    rest = [f"mvrag {command.name}"] + argv[2:]
    if any(a in ("-h", "--help", "-help") for a in rest[1:]):
        print(f"mvrag {command.name}: {command.summary}\n\n{fv.get_help()}")
        return 0
    try:
        positional = fv(rest)
    except flags.Error as e:
        print(f"mvrag {command.name}: {e}\nRun `mvrag {command.name} --help` for the flags.", file=sys.stderr)
        return 2
    _setup_jax(fv)
    try:
        return command.run(fv, positional)
    except _USER_ERRORS as e:
        print(f"mvrag {command.name}: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
