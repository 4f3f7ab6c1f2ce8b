"""Training checkpoints: one orbax CheckpointManager over WORKDIR/checkpoints with three named items per step.

    manager = open_manager(workdir, save_every=100, keep=3)
    save(manager, step, state, data_iter, cfg)            # async: returns once device arrays are copied out
    step = latest_step(manager)                           # newest *complete* step, or None
    state, cfg_dict = restore(manager, step, trainer.abstract_state, data_iter)  # onto the mesh of abstract_state

Items of CKPT_DIR/<step>/:
  state/      the TrainState (orbax StandardCheckpointHandler; sharded arrays, restored with target shardings)
  data_iter/  the grain iterator state, one JSON file per process (process_<i>-of-<n>.json)
  config/     the run's config as JSON (what `mvrag export` needs to find the model checkpoint the run started from)

Atomicity: orbax writes each step into `<step>.orbax-checkpoint-tmp` and renames it into place only after every item
is written (`_CHECKPOINT_METADATA` and `commit_success.txt` first), so a process killed mid-save leaves a tmp folder that
`all_steps()` does not list; the next manager removes it (cleanup_tmp_directories).
"""

import json
import pathlib
from typing import Any

import grain
import jax
import ml_collections as mlc
import orbax.checkpoint as ocp

CHECKPOINT_DIR = "checkpoints"
ITEMS = ("state", "data_iter", "config")


class NoCheckpointError(FileNotFoundError):
    """A workdir has no complete training checkpoint."""


def checkpoint_dir(workdir: str | pathlib.Path) -> pathlib.Path:
    return pathlib.Path(workdir).expanduser().absolute() / CHECKPOINT_DIR


def open_manager(workdir: str | pathlib.Path, *, save_every: int = 1, keep: int | None = 3, async_save: bool = True,
                 read_only: bool = False) -> ocp.CheckpointManager:
    """The run's manager: saves every `save_every` steps (others are skipped by `save`), keeps the last `keep`."""
    if save_every < 1:
        raise ValueError(f"checkpoint save_every={save_every}; set --config.checkpoint.save_every to a positive step "
                         "count")
    if keep is not None and keep < 1:
        raise ValueError(f"checkpoint keep={keep}; set --config.checkpoint.keep to at least 1")
    options = ocp.CheckpointManagerOptions(
        save_interval_steps=save_every, max_to_keep=keep, create=not read_only, read_only=read_only,
        cleanup_tmp_directories=not read_only, enable_async_checkpointing=async_save)
    return ocp.CheckpointManager(checkpoint_dir(workdir), options=options)


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
    items = {"state": ocp.args.StandardRestore(abstract_state), "config": ocp.args.JsonRestore()}
    if data_iter is not None:
        items["data_iter"] = grain.checkpoint.CheckpointRestore(data_iter)
    restored = manager.restore(step, args=ocp.args.Composite(**items))
    return restored["state"], restored["config"]


def restore_config(workdir: str | pathlib.Path, step: int | None = None) -> tuple[int, dict]:
    """(step, config dict) of `step` (default: the latest) of a training workdir, without touching arrays."""
    manager = open_manager(workdir, read_only=True)
    step = _pick_step(manager, workdir, step)
    return step, manager.restore(step, args=ocp.args.Composite(config=ocp.args.JsonRestore()))["config"]


def restore_state(workdir: str | pathlib.Path, abstract_state: Any, step: int | None = None) -> tuple[int, Any]:
    """(step, state) of a training workdir (default: the latest step), for export and evaluation."""
    manager = open_manager(workdir, read_only=True)
    step = _pick_step(manager, workdir, step)
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


def host_tree(tree: Any) -> Any:
    """Fully addressable copies of a (possibly sharded) tree as numpy arrays, on every process."""
    from jax.experimental import multihost_utils
    return jax.tree.map(lambda x: multihost_utils.process_allgather(x, tiled=True), tree)
