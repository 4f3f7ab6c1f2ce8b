"""Training checkpoints: one orbax CheckpointManager over WORKDIR/checkpoints with three named items per step.

    manager = open_manager(workdir, save_every=100, keep=3)
    save(manager, step, state, data_iter, cfg)            # async: returns once device arrays are copied out
    step = latest_step(manager)                           # newest *complete* step, or None
    state, cfg_dict = restore(manager, step, trainer.abstract_state, data_iter)  # onto the mesh of abstract_state

Items of CKPT_DIR/<step>/:
  state/      the TrainState (orbax StandardCheckpointHandler; sharded arrays, restored with target shardings), the
              EMA of the trained weights included (train.ema_decay > 0): a run resumes with the EMA setting it was
              saved with (EMAMismatchError otherwise); a checkpoint from before the EMA existed restores without one
  data_iter/  the grain iterator state, one JSON file per process (process_<i>-of-<n>.json)
  config/     the run's config as JSON (what `mvrag export` needs to find the model checkpoint the run started from)

Atomicity: orbax writes each step into `<step>.orbax-checkpoint-tmp` and renames it into place only after every item
is written (`_CHECKPOINT_METADATA` and `commit_success.txt` first), so a process killed mid-save leaves a tmp folder that
`all_steps()` does not list; the next manager removes it (cleanup_tmp_directories). In a bucket (gs://, where
renames are copies) orbax instead writes `commit_success.txt` last and lists only steps that have it.

WORKDIR may be local or a bucket URI (train/workdir.py): orbax takes either (etils.epath; arrays via tensorstore).
"""

import dataclasses
import json
import os
import pathlib
from typing import Any

import grain
import jax
import ml_collections as mlc
import numpy as np
import orbax.checkpoint as ocp
from etils import epath

from mvrag_jax.train import workdir as workdir_lib
from mvrag_jax.errors import MvragError, UsageError

CHECKPOINT_DIR = "checkpoints"
ITEMS = ("state", "data_iter", "config")


class NoCheckpointError(MvragError, FileNotFoundError):
    """A workdir has no complete training checkpoint."""


class NoEMAError(MvragError, ValueError):
    """An export of the EMA weights was asked of a checkpoint that holds none."""


class EMAMismatchError(MvragError, ValueError):
    """A run resumes with an EMA setting (train.ema_decay zero or not) other than its checkpoint's."""


def checkpoint_dir(workdir: str | os.PathLike) -> epath.Path:
    """WORKDIR/checkpoints (local, absolute; or gs://...)."""
    return workdir_lib.as_path(workdir) / CHECKPOINT_DIR


def open_manager(workdir: str | os.PathLike, *, save_every: int = 1, keep: int | None = 3, async_save: bool = True,
                 read_only: bool = False) -> ocp.CheckpointManager:
    """The run's manager: saves every `save_every` steps (others are skipped by `save`), keeps the last `keep`."""
    if save_every < 1 and not read_only:
        raise UsageError(f"checkpoint save_every={save_every}; set --config.train.ckpt_every to a positive step "
                         "count")
    if keep is not None and keep < 1 and not read_only:
        raise UsageError(f"checkpoint keep={keep}; set --config.train.keep_checkpoints to at least 1")
    if read_only:
        save_every, keep = 0, None  # what orbax sets for a read-only manager anyway (it warns otherwise)
    options = ocp.CheckpointManagerOptions(
        save_interval_steps=save_every, max_to_keep=keep, create=not read_only, read_only=read_only,
        cleanup_tmp_directories=not read_only, enable_async_checkpointing=async_save)
    registry = ocp.handlers.DefaultCheckpointHandlerRegistry()  # lets metadata/restore name items without args
    for item, save_args, restore_args in (("state", ocp.args.StandardSave, ocp.args.StandardRestore),
                                          ("config", ocp.args.JsonSave, ocp.args.JsonRestore),
                                          ("data_iter", grain.checkpoint.CheckpointSave,
                                           grain.checkpoint.CheckpointRestore)):
        registry.add(item, save_args)
        registry.add(item, restore_args)
    if not read_only:
        return ocp.CheckpointManager(checkpoint_dir(workdir), options=options, handler_registry=registry)
    from absl import logging
    # orbax announces "Given directory is read only" for any read_only manager, writable folder or not (export).
    notice = lambda record: "Given directory is read only" not in str(record.msg)
    logging.get_absl_logger().addFilter(notice)
    try:
        return ocp.CheckpointManager(checkpoint_dir(workdir), options=options, handler_registry=registry)
    finally:
        logging.get_absl_logger().removeFilter(notice)


def save(manager: ocp.CheckpointManager, step: int, state: Any, data_iter: grain.DatasetIterator | None,
         cfg: mlc.ConfigDict, *, force: bool = False) -> bool:
    """Start saving `step` (async); False when the save interval skips it. `force` saves off-interval (preemption,
    last step). The data iterator state is taken now, so it matches `state` exactly."""
    items = {"state": ocp.args.StandardSave(state), "config": ocp.args.JsonSave(json.loads(cfg.to_json()))}
    if data_iter is not None:
        items["data_iter"] = grain.checkpoint.CheckpointSave(data_iter)
    return manager.save(step, args=ocp.args.Composite(**items), force=force)


def latest_step(manager: ocp.CheckpointManager) -> int | None:
    """The newest complete step on disk (partial saves are never listed)."""
    manager.reload()
    return manager.latest_step()


def restore(manager: ocp.CheckpointManager, step: int, abstract_state: Any,
            data_iter: grain.DatasetIterator | None = None) -> tuple[Any, dict]:
    """(state, config dict) of `step`; arrays land with the shardings carried by `abstract_state`'s leaves (any mesh);
    `data_iter` (if given) is moved to the saved position in place."""
    # A TrainState saved before the EMA existed has no `ema` item: restore the other fields, then an empty EMA.
    # (Plain pytrees, e.g. a dict state, restore as they were saved.)
    drop_ema = not _check_ema(manager, step, abstract_state) and dataclasses.is_dataclass(abstract_state)
    target = _fields(abstract_state, drop="ema") if drop_ema else abstract_state
    items = {"state": ocp.args.StandardRestore(target), "config": ocp.args.JsonRestore()}
    if data_iter is not None:
        items["data_iter"] = grain.checkpoint.CheckpointRestore(data_iter)
    restored = manager.restore(step, args=ocp.args.Composite(**items))
    state = type(abstract_state)(**restored["state"], ema={}) if drop_ema else restored["state"]
    return state, restored["config"]


class NoRestorableCheckpointError(MvragError):
    """Every complete checkpoint of a workdir failed to restore (truncated or missing data files)."""


def restore_latest(manager: ocp.CheckpointManager, abstract_state: Any, data_iter: grain.DatasetIterator | None = None,
                   *, check: Any = None) -> tuple[Any, int, list[int]]:
    """(state, step, skipped steps) of the newest checkpoint that restores, newest first.

    A checkpoint whose files are truncated or missing (a disk that filled, a copy cut short: tensorstore's
    OUT_OF_RANGE, a missing data_iter/) is skipped with a warning naming it; `check(step)` (e.g. the config
    comparison) runs before each attempt, and its MvragErrors stop the search (an older step would fail it too).
    """
    from absl import logging
    steps = sorted(manager.all_steps(), reverse=True)
    failures: list[str] = []
    for step in steps:
        try:
            if check is not None:
                check(step)
            state, _ = restore(manager, step, abstract_state, data_iter)
        except (MvragError, KeyboardInterrupt):
            raise
        except Exception as e:  # noqa: BLE001 - any damage to the files; the next older step may be whole
            reason = str(e).strip().splitlines()[0][:300] if str(e).strip() else type(e).__name__
            logging.warning("checkpoint step %d in %s does not restore (%s); skipping it for an older one", step,
                            manager.directory, reason)
            failures.append(f"step {step}: {reason}")
            continue
        return state, step, [int(s) for s in steps[:len(failures)]]
    raise NoRestorableCheckpointError(
        f"no checkpoint in {manager.directory} restores ({'; '.join(failures[:3])}{' ...' if len(failures) > 3 else ''}); "
        "move the damaged step folders away to start over, or restore them from a copy")


def _check_ema(manager: ocp.CheckpointManager, step: int, abstract_state: Any) -> bool:
    """Whether the saved state has an `ema` item at all (checkpoints from before the EMA have none); raises when its
    having EMA weights disagrees with `abstract_state`'s (train.ema_decay changed between save and resume)."""
    saved = manager.item_metadata(step)["state"].tree
    has, wants = bool(saved.get("ema")), bool(getattr(abstract_state, "ema", None))
    if has != wants:
        raise EMAMismatchError(
            f"checkpoint step {step} in {manager.directory} was saved {'with' if has else 'without'} an EMA of the "
            f"trained weights, but this run's train.ema_decay is {'0' if has else 'set'}; resume with the run's own "
            "--config.train.ema_decay, or start a new --workdir with --config.train.init set to an export of it")
    return "ema" in saved


def _fields(state: Any, drop: str) -> dict:
    """A state dataclass as {field: value} without the field `drop`."""
    return {f.name: getattr(state, f.name) for f in dataclasses.fields(state) if f.name != drop}


def restore_config(workdir: str | os.PathLike, step: int | None = None) -> tuple[int, dict]:
    """(step, config dict) of `step` (default: the latest) of a training workdir, without touching arrays."""
    manager = open_manager(workdir, read_only=True)
    step = _pick_step(manager, workdir, step)
    return step, manager.restore(step, args=ocp.args.Composite(config=ocp.args.JsonRestore()))["config"]


def restore_state(workdir: str | os.PathLike, abstract_state: Any | None = None,
                  step: int | None = None) -> tuple[int, Any]:
    """(step, state) of a training workdir (default: the latest step), for export and evaluation.

    With `abstract_state` (e.g. `trainer.abstract_state`) the state lands on its shardings; without it, as a tree
    of dicts on the first local device, whatever mesh or process count wrote it (export on one host)."""
    manager = open_manager(workdir, read_only=True)
    step = _pick_step(manager, workdir, step)
    if abstract_state is None:
        device = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
        abstract_state = jax.tree.map(lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=device),
                                      manager.item_metadata(step)["state"].tree)
    state = manager.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore(abstract_state)))["state"]
    return step, state


def _pick_step(manager: ocp.CheckpointManager, workdir, step: int | None) -> int:
    steps = manager.all_steps()
    if not steps:
        raise NoCheckpointError(f"{checkpoint_dir(workdir)} holds no complete training checkpoint; pass the --workdir "
                                "of a `mvrag train` run that saved at least once")
    if step is None:
        return max(steps)
    if step not in steps:
        raise NoCheckpointError(f"{checkpoint_dir(workdir)} has no step {step}; it has steps {sorted(steps)}")
    return step



def is_workdir(path: str | os.PathLike) -> bool:
    """A training workdir (has checkpoints/), as opposed to a converted model checkpoint (mvrag convert)."""
    return checkpoint_dir(path).is_dir()


def export_params(workdir: str | os.PathLike, step: int | None = None, *, ema: bool = False
                  ) -> tuple[pathlib.Path, dict]:
    """(model checkpoint the run started from, its params with the trained ones merged in) for `step` (default:
    the latest); `ema`: the EMA of the trained weights in their place (train.ema_decay > 0 runs). Frozen weights come
    from that checkpoint, never from the run (which may hold them in bfloat16, train.frozen_dtype); so do components
    the run does not hold (DINOv2)."""
    from mvrag_jax.convert import load_model_checkpoint
    from mvrag_jax.inputs.release import check_finite_weights
    step, cfg = restore_config(workdir, step)
    init = str(cfg.get("train", {}).get("init", ""))
    init_dir = pathlib.Path(init).expanduser()
    if not (init_dir / "release_files" / "model_index.json").is_file():
        raise NoCheckpointError(
            f"{workdir} started from train.init={init!r}, not from a converted checkpoint, so the release configs to "
            "export with are unknown; export runs whose --config.train.init is a `mvrag convert` folder")
    _, state = restore_state(workdir, step=step)
    if ema and not state.get("ema"):
        raise NoEMAError(f"step {step} of {workdir} holds no EMA weights (the run had train.ema_decay=0); export "
                         "without --ema, or train with --config.train.ema_decay=0.999")
    _, params = load_model_checkpoint(init_dir)
    trained = jax.tree.map(np.asarray, state["ema" if ema else "trainable"])
    check_finite_weights(trained, f"step {step} of {workdir}")
    for name, tree in trained.items():
        if name not in params:
            raise NoCheckpointError(f"step {step} of {workdir} holds component {name!r} that {init_dir} lacks")
        params[name] = _overlay(params[name], tree)
    return init_dir, params


def _overlay(base: dict, trained: dict) -> dict:
    """`base` with every leaf that `trained` holds replaced (new keys added: the base-init image branch)."""
    out = dict(base)
    for key, value in trained.items():
        out[key] = _overlay(base.get(key, {}), value) if isinstance(value, dict) else value
    return out


def export(ckpt_or_workdir: str | pathlib.Path, out_dir: str | pathlib.Path, *, dtype: str = "fp32",
           overwrite: bool = False, step: int | None = None, ema: bool = False) -> pathlib.Path:
    """`mvrag export`: a converted checkpoint, or a training workdir (its latest step, or `step`; with `ema` its
    EMA weights in place of the trained ones), written in the official release layout at `out_dir`."""
    from mvrag_jax.convert import export_checkpoint
    from mvrag_jax.convert.export import export_release
    if not is_workdir(ckpt_or_workdir):
        if ema:
            raise NoEMAError(f"{ckpt_or_workdir} is not a training workdir (no {CHECKPOINT_DIR}/ folder), so it has no "
                             "EMA weights; pass the --workdir of a run with train.ema_decay > 0, or drop --ema")
        if workdir_lib.is_remote(ckpt_or_workdir):
            raise NoCheckpointError(f"{ckpt_or_workdir} holds no {CHECKPOINT_DIR}/ folder: a --ckpt in a bucket must "
                                    "be a `mvrag train` --workdir; copy a converted checkpoint to local disk to export it")
        return export_checkpoint(ckpt_or_workdir, out_dir, dtype=dtype, overwrite=overwrite)
    init_dir, params = export_params(ckpt_or_workdir, step, ema=ema)
    return export_release(init_dir, params, out_dir, dtype=dtype, overwrite=overwrite)
