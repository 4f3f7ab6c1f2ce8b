"""What every `mvrag` subcommand shares: the `Command` record, the multi-process and runtime flags, and the
command-line spelling (dashed multi-word flags, config paths that work from any directory).

absl only knows the names flags were defined with (`require_all`). Users and docs write `--require-all`, so
`normalise_argv` maps each dashed spelling to the defined name before absl parses, and `dashed_help` shows the
dashed spelling in `--help`. Both look only at names that are defined, so values and `--config.a_field` overrides
pass through untouched.
"""

import dataclasses
import difflib
import importlib.util
import re
import sys
from typing import Callable

from absl import flags

import configs
from mvrag_jax.errors import UsageError, path_error_line



@dataclasses.dataclass(frozen=True)
class Command:
    """One subcommand: its name, one-line summary, flag definitions and the function it runs (flags, positionals)."""
    name: str
    summary: str
    define: Callable[[flags.FlagValues], None]
    run: Callable[[flags.FlagValues, list[str]], int]
    config: tuple[str, str] | None = None  # (default spec in configs/, help) of a `--config` flag, if any


def define_runtime(fv: flags.FlagValues) -> None:
    flags.DEFINE_string("compile_cache_dir", "~/.cache/mvrag_jax/xla",
                        "Persistent XLA compilation cache (reused across runs); 'none' disables it.", flag_values=fv)
    flags.DEFINE_bool("verbose", False, "Log at DEBUG level and show the libraries' notices (tfds' dataset "
                      "configuration dumps and preparation lines), which are quiet by default.", flag_values=fv)
    flags.DEFINE_bool("debug", False, "Print the traceback of every error (errors of ours are otherwise one line, "
                      "exit 2; any other error always prints its traceback, exit 1).", flag_values=fv)


def define_processes(fv: flags.FlagValues) -> None:
    """Flags to join a multi-process job (train and generate): mvrag_jax/cluster/distributed.py."""
    flags.DEFINE_string("coordinator", None, "Multi-process: HOST:PORT of process 0 (omit on one host).",
                        flag_values=fv)
    flags.DEFINE_integer("num_processes", None, "Multi-process: how many processes join.", flag_values=fv)
    flags.DEFINE_integer("process_id", None, "Multi-process: this process's id, 0..num_processes-1.", flag_values=fv)
    flags.DEFINE_bool("multihost", False, "Join a Cloud TPU pod slice (coordinator, count and id auto-detected).",
                      flag_values=fv)
    flags.DEFINE_float("init_timeout", 300.0, "Seconds to wait for every process to connect before exiting with a "
                       "message naming the missing one.", flag_values=fv)


def use_cpu_collectives(fv: flags.FlagValues) -> None:
    if fv.num_processes and fv.num_processes > 1:  # CPU collectives between processes (tests, CPU clusters)
        import jax
        jax.config.update("jax_cpu_collectives_implementation", "gloo")


# A flag token: `-name`, `--name` or `--name=value`; a dot (config overrides) never matches.
_FLAG = re.compile(r"(--?)([A-Za-z][\w-]*)(=.*)?", re.S)


def _defined_name(name: str, fv: flags.FlagValues) -> str | None:
    """The defined flag `name` spells (`foo-bar` -> `foo_bar`, `no-foo-bar` -> `nofoo_bar` for booleans)."""
    underscored = name.replace("-", "_")
    for candidate in (name, underscored):
        if candidate in fv:
            return candidate
    if underscored.startswith("no"):  # boolean negation: --nofoo-bar, --no-foo-bar, --no_foo_bar
        base = underscored[2:].lstrip("_")
        if base in fv and fv[base].boolean:
            return f"no{base}"
    return None


def normalise_argv(args: list[str], fv: flags.FlagValues) -> list[str]:
    """`args` (no program name) with every dashed flag name replaced by its defined, underscored name.

    Tokens that follow a flag expecting a separate value, and everything after `--`, are left as they are.
    """
    out: list[str] = []
    takes_value = False
    for i, arg in enumerate(args):
        if takes_value:
            out.append(arg)
            takes_value = False
            continue
        if arg == "--":
            out.extend(args[i:])
            break
        match = _FLAG.fullmatch(arg)
        name = match and _defined_name(match[2], fv)
        if not name:
            out.append(arg)
            continue
        out.append(f"{match[1]}{name}{match[3] or ''}")
        takes_value = match[3] is None and name in fv and not fv[name].boolean
    return out


def resolve_config_args(args: list[str], name: str = "config") -> list[str]:
    """`--config PATH[:arg]` values made loadable from any directory (see `configs.resolve`)."""
    out = list(args)
    for i, arg in enumerate(out):
        if arg in (f"-{name}", f"--{name}") and i + 1 < len(out):
            out[i + 1] = configs.resolve(out[i + 1])
        elif arg.startswith((f"-{name}=", f"--{name}=")):
            flag, _, value = arg.partition("=")
            out[i] = f"{flag}={configs.resolve(value)}"
    return out


def dashed_help(text: str, fv: flags.FlagValues) -> str:
    """absl's help text with multi-word flags spelled with dashes (`--[no]require-all`, `--batch-size`)."""
    for name in sorted((n for n in fv if "_" in n and "." not in n), key=len, reverse=True):
        text = re.sub(rf"(--(?:\[no\])?){re.escape(name)}(?![\w.-])", lambda m: m[1] + name.replace("_", "-"), text)
    return text


def _config_spec(args: list[str], default: str) -> str:
    """The `--config PATH[:arg]` in `args` (already resolved), else `default`."""
    for i, arg in enumerate(args):
        if arg in ("-config", "--config") and i + 1 < len(args):
            return args[i + 1]
        if arg.startswith(("-config=", "--config=")):
            return arg.partition("=")[2]
    return default


def _load_config(spec: str):
    path, _, arg = spec.partition(":")
    module_spec = importlib.util.spec_from_file_location("_mvrag_config_check", path)
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    return module.get_config(arg) if arg else module.get_config()


def check_config_overrides(args: list[str], default: str) -> None:
    """Raise UsageError for the first `--config.a.b=v` override naming a field the config does not have, with the
    closest existing names (ml_collections answers with a traceback)."""
    cfg = None
    for arg in args:
        if not arg.startswith(("--config.", "-config.")):
            continue
        dotted = arg.lstrip("-").partition("=")[0].split(".")[1:]
        cfg = cfg if cfg is not None else _load_config(_config_spec(args, default))
        node = cfg
        for depth, part in enumerate(dotted):
            keys = list(node.keys()) if hasattr(node, "keys") else []
            if part in keys:
                node = node[part]
                continue
            parent = ".".join(["config", *dotted[:depth]])
            close = difflib.get_close_matches(part, keys, n=3, cutoff=0.6)
            hint = (f"did you mean {' or '.join(f'--{parent}.{c}' for c in close)}?" if close else
                    f"{'--' + parent} has the fields {', '.join(sorted(keys))}" if keys else
                    f"--{parent} is a value, not a group of fields")
            raise UsageError(f"unknown config field --{'.'.join(['config', *dotted])}; {hint}")


def _not_a_library_notice(record) -> bool:
    """A log filter (True: keep) that drops tfds' INFO/WARNING chatter: a multi-line `Using custom data
    configuration: ...` per dataset, "has no dataset_info.json" before every build, and its printed `Downloading and
    preparing dataset` lines (nothing downloads), which data_pipelines/build.py logs as `tfds: ...`."""
    return not (record.levelno < 40 and ("/tensorflow_datasets/" in record.pathname
                                         or str(record.msg).startswith("tfds: ")))


def _not_a_reported_disk_error(record) -> bool:
    """A log filter (True: keep) that drops orbax's ERROR record, with traceback, of a write a full or read-only disk
    refused: its writer thread logs it, then the main thread raises the same error and `mvrag` answers it in one
    line naming the disk (errors.path_error_line). asyncio's "exception was never retrieved" of the same failed
    write (orbax's gathered futures, collected after the answer) goes the same way."""
    return not (record.exc_info and ("/orbax/" in record.pathname or record.name == "asyncio")
                and path_error_line(record.exc_info[1]) is not None)


def _quiet_closed_loop(unraisable) -> None:
    """sys.unraisablehook that drops tensorstore's late "Event loop is closed" callbacks: after a failed orbax write
    its pending futures finish on the loop orbax already closed, one printed traceback each, after our answer.
    Every other unraisable exception is printed as Python would."""
    if isinstance(unraisable.exc_value, RuntimeError) and str(unraisable.exc_value) == "Event loop is closed":
        return
    sys.__unraisablehook__(unraisable)


def configure_logging(verbose: bool) -> None:
    """At the CLI entry only: `--verbose` logs at DEBUG with every notice; otherwise tfds' notices and a failed
    write's library noise (the error itself is answered in one line) are dropped."""
    from absl import logging
    if verbose:
        logging.set_verbosity(logging.DEBUG)
        return
    logger = logging.get_absl_logger()
    for keep in (_not_a_library_notice, _not_a_reported_disk_error):
        if keep not in logger.filters:
            logger.addFilter(keep)
    import logging as std_logging
    asyncio_logger = std_logging.getLogger("asyncio")
    if _not_a_reported_disk_error not in asyncio_logger.filters:
        asyncio_logger.addFilter(_not_a_reported_disk_error)
    sys.unraisablehook = _quiet_closed_loop
