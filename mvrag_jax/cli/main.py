"""`mvrag`: the command line. Each subcommand only parses flags and calls one library function.

    mvrag convert --release DIR --out CKPT_DIR
    mvrag convert --mvdream FILE|DIR --imagedream FILE|DIR [--release DIR] --out CKPT_DIR   # training init
    mvrag export --ckpt CKPT_DIR|WORKDIR --out DIR [--dtype fp32|fp16|bf16] [--ema]
    mvrag verify-reference --release DIR|--mvdream FILE|--imagedream FILE --cases DIR [--json] [--only NAME ...]
    mvrag generate --ckpt DIR|--release DIR --prompt TEXT|--prompts FILE [--retrieved DIR|--index IDX] --out DIR
    mvrag reconstruct --views DIR --lgm model_fp16_fixrot.safetensors --out DIR     # LGM 3D Gaussians + renders
    mvrag bench unet|sample --config configs/tiny.py
    mvrag bench train --config configs/train.py:size=tiny --meshes data=1 --meshes data=2,fsdp=4 [--batch 8]
    mvrag bench all --out FILE.json | mvrag bench compare A.json B.json
    mvrag data build|preview|bench --config configs/data.py:size=tiny --config.data_dir DIR
    mvrag data variants --ckpt CKPT --renders DIR --per_object 2
    mvrag index --collection FILE.jsonl --out IDX [--kind bm25|dense --clip-model DIR]
    mvrag retrieve --index IDX|--folder DIR --prompt TEXT [--k 4] [--out DIR]
    mvrag eval (--ckpt DIR | --images DIR) --dataset ood_eval|DIR --out DIR [--clip_model DIR] [--dinov2 DIR] ...
    mvrag train --config configs/train.py:size=tiny --workdir DIR [--config.train.steps=100 ...]
    mvrag plan --config configs/train.py --topology v5e:2x4 --mesh data=1,fsdp=8 --batch 24 [--find_max_batch]
Run `mvrag <subcommand> --help` for its flags. Multi-word flags take dashes or underscores (--require-all,
--require_all); `--config configs/NAME.py` finds the packaged configs from any directory.
"""

import os
import sys
import traceback

from absl import flags
from ml_collections import config_flags

import configs
from mvrag_jax.cli import (bench, data, evaluation, flags as cli_flags, generate, reconstruct, release, retrieval,
                           train)
from mvrag_jax.cli.flags import Command
from mvrag_jax.errors import MvragError, path_error_line

# In the order `mvrag --help` lists them; each module holds its subcommands' flags and runners.
COMMANDS = {c.name: c for module in (release, generate, reconstruct, data, bench, retrieval, evaluation, train)
            for c in module.COMMANDS}


def _setup_jax(fv: flags.FlagValues) -> None:
    """Process-wide JAX settings live here, at the CLI entry, and nowhere else."""
    import jax
    if fv.compile_cache_dir.lower() != "none":
        jax.config.update("jax_compilation_cache_dir", os.path.expanduser(fv.compile_cache_dir))
        jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)
    jax.config.update("jax_threefry_partitionable", True)


def _usage() -> str:
    lines = [__doc__.strip(), "", "subcommands:"]
    lines += [f"  {name:18s} {c.summary}" for name, c in COMMANDS.items()]
    return "\n".join(lines)


def _flag_values(command: Command, args: list[str]) -> tuple[flags.FlagValues, list[str]]:
    """`command`'s flags, defined, and `args` with dashed names and config paths normalised (not parsed yet)."""
    fv = flags.FlagValues()
    command.define(fv)
    cli_flags.define_runtime(fv)
    args = cli_flags.normalise_argv(args, fv)
    if command.config:
        args = cli_flags.resolve_config_args(args)
        argv = [f"mvrag {command.name}"] + args  # config_flags reads `--config.x` overrides from this list
        default = configs.resolve(command.config[0])
        try:
            config_flags.DEFINE_config_file("config", default, command.config[1], flag_values=fv, lock_config=True,
                                            sys_argv=argv)
        except (KeyError, AttributeError):  # ml_collections' answer to an unknown field: a traceback
            cli_flags.check_config_overrides(args, default)
            raise
    return fv, args


def parse(command: Command, args: list[str]) -> tuple[flags.FlagValues, list[str]]:
    """Define `command`'s flags and parse `args` (after the subcommand); returns (flags, positional args).

    Raises flags.Error for unknown or missing flags, FileNotFoundError for a config file that does not exist.
    """
    fv, args = _flag_values(command, args)
    return fv, fv([f"mvrag {command.name}"] + args)


def command_help(command: Command) -> str:
    fv, _ = _flag_values(command, [])
    return f"mvrag {command.name}: {command.summary}\n\n{cli_flags.dashed_help(fv.get_help(), fv)}"


def _select_platforms() -> None:
    """Keep a machine with libtpu but no TPU on CPU (else every command prints libtpu's init errors)."""
    from mvrag_jax.cluster.platforms import default_platforms
    platforms = default_platforms()
    if platforms is not None:
        import jax
        jax.config.update("jax_platforms", platforms)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv if argv is None else argv)
    _select_platforms()
    # transformers (used for tokenizers only) otherwise announces at import that PyTorch is absent.
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    if len(argv) < 2 or argv[1] in ("-h", "--help", "help"):
        print(_usage())
        return 0
    if argv[1] not in COMMANDS:
        print(f"mvrag: unknown subcommand {argv[1]!r}\n\n{_usage()}", file=sys.stderr)
        return 2
    command = COMMANDS[argv[1]]
    if any(a in ("-h", "--help", "-help") for a in argv[2:]):
        print(command_help(command))
        return 0
    debug = any(a in ("--debug", "-debug") for a in argv[2:])
    try:
        fv, positional = parse(command, argv[2:])
    except flags.Error as e:
        print(f"mvrag {command.name}: {e}\nRun `mvrag {command.name} --help` for the flags.", file=sys.stderr)
        return 2
    except MvragError as e:
        return _report(command.name, str(e), debug)
    _setup_jax(fv)
    cli_flags.configure_logging(fv.verbose)
    try:
        return command.run(fv, positional)
    except MvragError as e:  # ours: the message names cause and fix
        return _report(command.name, str(e), fv.debug)
    except KeyboardInterrupt:
        print(f"mvrag {command.name}: interrupted", file=sys.stderr)
        return 130
    except Exception as e:  # the disk's fault (read-only, full, ...), even wrapped by orbax: one line
        line = path_error_line(e)
        if line is None:
            raise  # a bug here or in a library under us: Python prints the traceback, exit 1
        return _report(command.name, line, fv.debug)


def _report(name: str, message: str, debug: bool) -> int:
    """Our one-line answer to an error a user can fix (exit 2); with --debug, the traceback above it."""
    if debug:
        traceback.print_exc()
    print(f"mvrag {name}: error: {message}", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
