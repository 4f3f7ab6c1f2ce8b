"""Experiment configs: each module has `get_config(arg=None)` (see STYLE.md §11).

`resolve("tiny.py:size=medium")` turns a config spec into one that loads from any working directory: commands
default to the configs installed with this package, and `configs/NAME.py` on the command line falls back to them
when the working directory has no such file.
"""

import os
import pathlib

from mvrag_jax.errors import PathNotFoundError

ROOT = pathlib.Path(__file__).parent


def resolve(spec: str) -> str:
    """`PATH[:arg]` -> the same spec with PATH loadable from the current directory.

    A PATH that exists (relative to the cwd or absolute) is kept as given. Otherwise `NAME.py` or `configs/NAME.py`
    is looked up in this package. Anything else is a FileNotFoundError naming the packaged configs.
    """
    path, sep, arg = spec.partition(":")
    if pathlib.Path(path).expanduser().is_file():
        return spec
    parts = pathlib.PurePath(path).parts
    if len(parts) == 1 or (len(parts) == 2 and parts[0] == "configs"):
        packaged = ROOT / parts[-1]
        if packaged.is_file() and packaged.suffix == ".py":
            return f"{packaged}{sep}{arg}"
    names = ", ".join(f"configs/{p.name}" for p in sorted(ROOT.glob("*.py")) if not p.name.startswith("_"))
    raise PathNotFoundError(f"config file {path!r} not found (working directory {os.getcwd()}); pass a path to a "
                            f"config module or one of the packaged configs: {names}")
