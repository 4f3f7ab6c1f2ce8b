"""Our converted-model checkpoint: an orbax params tree per component, our configs as JSON, and the release's
non-weight files (tokenizer, scheduler, processors, original configs) so inference and export need nothing else.

Layout of CKPT_DIR:
  params/            orbax StandardCheckpointer tree {component: params}
  mvrag_config.json  {"format": 1, "components": {name: config dict}}
  release_files/     tokenizer/, scheduler/, feature_extractor/, <component>/config.json, model_index.json, ...
Every write goes to a temporary sibling folder that is renamed into place, so a half-written checkpoint is never seen.
"""

import contextlib
import dataclasses
import json
import os
import pathlib
import shutil
import tempfile
import time
from typing import Any, Iterator

import numpy as np
import orbax.checkpoint as ocp

from mvrag_jax.errors import MvragError, ensure_writable_dir
from mvrag_jax.inputs.release import check_finite_weights

CONFIG_FILE = "mvrag_config.json"
FORMAT_VERSION = 1


class CheckpointError(MvragError, ValueError):
    """A checkpoint directory is missing, incomplete, or the target already exists."""


def config_to_dict(config: Any) -> dict[str, Any]:
    return dataclasses.asdict(config)


def config_from_dict(cls: type, values: dict[str, Any]) -> Any:
    """Rebuild a frozen config dataclass from JSON (lists become tuples; unknown fields are an error)."""
    fields = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - fields)
    if unknown:
        raise CheckpointError(f"{cls.__name__} has no fields {unknown}; the checkpoint was written by a newer mvrag-jax")
    as_tuple = lambda v: tuple(as_tuple(x) for x in v) if isinstance(v, list) else v
    return cls(**{k: as_tuple(v) for k, v in values.items()})


def check_target(target: str | os.PathLike, overwrite: bool = False) -> pathlib.Path:
    """The absolute output folder; an error when it exists and `overwrite` is off (call before any long work)."""
    target = pathlib.Path(target).absolute()
    if target.exists() and not overwrite:
        raise CheckpointError(f"{target} already exists; choose another output folder or pass --overwrite")
    ensure_writable_dir(target.parent, "the folder of --out")  # read-only, full, or a file: before the work
    return target


@contextlib.contextmanager
def atomic_directory(target: str | os.PathLike, overwrite: bool = False) -> Iterator[pathlib.Path]:
    """Yield a temporary folder next to `target`; on success it replaces `target`, on error it is deleted."""
    target = check_target(target, overwrite)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = pathlib.Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=target.parent))
    try:
        yield tmp
        if target.exists():
            old = target.with_name(f".{target.name}.old-{os.getpid()}")
            target.rename(old)
            tmp.rename(target)
            shutil.rmtree(old)
        else:
            tmp.rename(target)
    except BaseException:
        _remove_tree(tmp)
        raise


def _remove_tree(folder: pathlib.Path, quiet_s: float = 1.0, limit_s: float = 10.0) -> None:
    """rmtree that outlasts writers still finishing in the folder: after a failed orbax save, tensorstore's writes in
    flight can create files (and their parent folders) again after the tree is gone (seen on a full disk under
    load), so remove until it has stayed absent for `quiet_s` (at most `limit_s` in all)."""
    deadline, absent_since = time.monotonic() + limit_s, None
    while time.monotonic() < deadline:
        if os.path.lexists(folder):
            shutil.rmtree(folder, ignore_errors=True)
            absent_since = None
        elif absent_since is None:
            absent_since = time.monotonic()
        elif time.monotonic() - absent_since >= quiet_s:
            return
        time.sleep(0.05)


def save_checkpoint(out_dir: str | os.PathLike, configs: dict[str, Any], params: dict[str, Any],
                    release_files: dict[str, pathlib.Path] | None = None, overwrite: bool = False) -> pathlib.Path:
    """Atomically write a model checkpoint. `release_files` maps relative names to files/folders to copy."""
    with atomic_directory(out_dir, overwrite) as tmp:
        # Async: it must finish before the rename publishes the folder; closing it on an error (a full disk) joins
        # its writer threads, so their noise ends before our one-line answer instead of after it.
        with ocp.StandardCheckpointer() as checkpointer:
            checkpointer.save(tmp / "params", params)
            checkpointer.wait_until_finished()
        meta = {"format": FORMAT_VERSION, "components": {k: config_to_dict(v) for k, v in configs.items()}}
        (tmp / CONFIG_FILE).write_text(json.dumps(meta, indent=1))
        for rel, src in (release_files or {}).items():
            dst = tmp / "release_files" / rel
            dst.parent.mkdir(parents=True, exist_ok=True)
            (shutil.copytree if src.is_dir() else shutil.copy2)(src, dst)
    return pathlib.Path(out_dir)


def load_configs(ckpt_dir: str | os.PathLike, config_classes: dict[str, type]) -> dict[str, Any]:
    """The component configs of a checkpoint written by `save_checkpoint` (reads only its JSON, no weights)."""
    ckpt_dir = pathlib.Path(ckpt_dir).absolute()
    meta_path = ckpt_dir / CONFIG_FILE
    if not ckpt_dir.is_dir():
        raise CheckpointError(f"checkpoint {ckpt_dir} is not a directory; pass the --out folder of `mvrag convert`")
    if not meta_path.is_file() or not (ckpt_dir / "params").is_dir():
        raise CheckpointError(f"{ckpt_dir} is not an mvrag checkpoint (needs {CONFIG_FILE} and params/); "
                              "create one with `mvrag convert --release DIR --out CKPT_DIR`")
    meta = json.loads(meta_path.read_text())
    unknown = sorted(set(meta["components"]) - set(config_classes))
    if unknown:
        raise CheckpointError(f"{ckpt_dir} holds components {unknown} this version does not know")
    return {name: config_from_dict(config_classes[name], values) for name, values in meta["components"].items()}


def load_checkpoint(ckpt_dir: str | os.PathLike, config_classes: dict[str, type]) -> tuple[dict, dict]:
    """(configs, params) of a checkpoint written by `save_checkpoint`; params are float32 numpy trees."""
    configs = load_configs(ckpt_dir, config_classes)
    restored = ocp.StandardCheckpointer().restore(pathlib.Path(ckpt_dir).absolute() / "params")
    params = {name: _to_numpy(restored[name]) for name in configs}
    check_finite_weights(params, pathlib.Path(ckpt_dir).absolute())  # NaN weights generate black views
    return configs, params


def _to_numpy(tree: Any) -> Any:
    if isinstance(tree, dict):
        return {k: _to_numpy(v) for k, v in tree.items()}
    return np.asarray(tree)
