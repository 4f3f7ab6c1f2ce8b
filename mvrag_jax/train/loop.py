"""The training loop: it only moves data, steps, logs and saves; the maths is in the trainer (train/trainer.py, train/step.py).

    summary = run(get_config("size=tiny"), "/tmp/mvrag_train_tiny")      # configs/train.py
    mvrag train --config configs/train.py:size=tiny --workdir /tmp/mvrag_train_tiny   # the same from the shell

What a run does, in order: check the config against the devices (errors name the fix), build the mesh and the
trainer, build the datasets if absent (process 0 first), open the loader for this host's shard, resume from the
latest complete checkpoint in WORKDIR/checkpoints (state, data position and all), compile the step once (timed apart),
then step until `train.steps`, saving asynchronously every `train.ckpt_every` steps and at the end.

Preemption: SIGTERM (what Cloud TPU sends), SIGINT (Ctrl-C) or `stop.set()` lets the current step finish, saves it
when a step ran since the last save, and `run` returns with summary["preempted"] = True and summary["signal"] (the CLI
exits 0, or 130 after SIGINT); the next run resumes there and appends each step's metrics once. A signal during the
data build, the restore or the compile is honoured once that finishes: no step runs, nothing new is saved. A second
SIGINT interrupts at once (KeyboardInterrupt). With several processes the SIGTERM stop point is agreed through JAX's
preemption sync service, so every host saves the same step.

Faults (README "Reliability"): a second trainer on the workdir is refused (train/lock.py); a resume compares the
saved config with this one (train/resume.py); a latest checkpoint that does not restore (truncated or missing files)
is skipped for the newest one that does (checkpoint.restore_latest); a non-finite step is skipped and counted
(train/step.py, metric `skipped`).

Samples: `sample_fn(state, step) -> {name: [H, W, 3] uint8}` is called on every process every `train.sample_every`
steps (generation is a sharded computation); process 0 writes WORKDIR/samples/<name>_<step>.png and TensorBoard images.

WORKDIR may be a bucket (gs://...; train/workdir.py): orbax writes the checkpoints there itself, metrics.py stages
the JSONL and TensorBoard files locally and uploads them, and PNGs are single uploads. Datasets are then not built
into WORKDIR/data but into a local folder on each host (~/.cache/mvrag_jax/data/gs/BUCKET/PATH; the builders write
local files, and every host builds the same bytes from the config), unless --config.data.data_dir names one.

Without a `sample_fn`, a run with sample steps ahead uses train/samples.py's (grids of fixed validation objects).
Sampling time, its compile included, is kept out of the step timings (steps_per_s) and reported apart (sample_s).
"""

import contextlib
import copy
import hashlib
import io
import os
import pathlib
import signal
import threading
import time
from typing import Any, Callable

import grain
import jax
import ml_collections as mlc
import numpy as np
from absl import logging
from etils import epath
from tqdm import tqdm

from data_pipelines import build, loader
from mvrag_jax import sharding
from mvrag_jax.cluster import distributed
from mvrag_jax.errors import ensure_writable_dir
from mvrag_jax.train import (checkpoint, lock as lock_lib, metrics, multislice, resume, state as state_lib,
                             workdir as workdir_lib)
from mvrag_jax.train.data import to_global
from mvrag_jax.errors import MvragError

SampleFn = Callable[[Any, int], dict[str, np.ndarray]]
DATA_SUBDIR = "data"
SAMPLES_SUBDIR = "samples"


class TrainConfigError(MvragError, ValueError):
    """The config cannot run on these devices; the message names the field to change."""


def check_config(cfg: mlc.ConfigDict, num_processes: int) -> None:
    """Fail before anything expensive: unknown mesh axes, a batch that does not split over the hosts, a missing init
    checkpoint. (sharding.make_mesh checks the mesh against the devices, make_trainer the batch against data*fsdp.)"""
    unknown = sorted(set(cfg.mesh.keys()) - set(sharding.MESH_AXES) - set(sharding.DCN_AXES))
    if unknown:
        raise TrainConfigError(f"unknown mesh axis {', '.join(map(repr, unknown))} in --config.mesh; the mesh axes are "
                               f"{', '.join(sharding.MESH_AXES + tuple(sharding.DCN_AXES))}")
    batch = int(cfg.train.batch_size)  # make_trainer checks it against data*fsdp and data.batch_size x hosts
    if batch % num_processes:
        raise TrainConfigError(f"batch {batch} does not split over {num_processes} processes; set "
                               f"--config.train.batch_size to a multiple of {num_processes} (each process loads "
                               "its share: data.batch_size is derived)")
    init = str(cfg.train.init)
    if state_lib.is_checkpoint_init(init):
        path = pathlib.Path(init).expanduser() if init else None
        if path is None or not path.is_dir():
            raise TrainConfigError(
                f"init checkpoint {init!r} not found; set --config.train.init to a converted checkpoint folder "
                "(`mvrag convert --release DIR --out CKPT_DIR`), or to random / base")


def default_data_dir(workdir: str | os.PathLike) -> str:
    """Where datasets are built when data.data_dir is unset: WORKDIR/data, or for a bucket workdir a local folder
    on each host (the dataset builders write local files)."""
    workdir = workdir_lib.as_path(workdir)
    if workdir_lib.is_remote(workdir):
        return str(workdir_lib.local_cache(workdir, DATA_SUBDIR))
    return str(workdir / DATA_SUBDIR)


def resolve_config(cfg: mlc.ConfigDict, workdir: str | os.PathLike) -> mlc.ConfigDict:
    """A copy of `cfg` with references resolved, the datasets under `default_data_dir(workdir)` unless data.data_dir
    is set, and data.batch_size = train.batch_size / processes (the copy is what the checkpoint's `config` item
    records)."""
    resolved = copy.deepcopy(cfg).copy_and_resolve_references()
    resolved.data.data_dir = str(resolved.data.data_dir or default_data_dir(workdir))
    # The loader's batch is this host's share of the global one: derived, so a run sets only train.batch_size.
    resolved.data.batch_size = int(resolved.train.batch_size) // jax.process_count()
    return resolved


def prepare_data(data_cfg: mlc.ConfigDict) -> None:
    """Build the configured datasets if absent: process 0 first (the others then find them on a shared disk,
    or build their own copy on a local one)."""
    from jax.experimental import multihost_utils
    modes = [key for key, w in (("mode_3d", data_cfg.mix.weight_3d), ("mode_2d", data_cfg.mix.weight_2d)) if w > 0]
    if jax.process_index() == 0:
        build.build_all(data_cfg, modes)
    if jax.process_count() > 1:
        multihost_utils.sync_global_devices("mvrag_datasets_built")
        if jax.process_index() != 0:
            build.build_all(data_cfg, modes)


class StopSignal:
    """Set by SIGTERM or SIGINT (or by the caller's `stop` event); `reached(step)` says when to save and leave."""

    def __init__(self, stop: threading.Event | None = None):
        self.event = stop or threading.Event()
        self.signal_name: str | None = None
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> "StopSignal":
        # Several processes: JAX's preemption service owns SIGTERM and agrees on the step (see `reached`); SIGINT
        # keeps Python's default there (an interrupt, no save).
        if jax.process_count() == 1 and threading.current_thread() is threading.main_thread():
            for signum in (signal.SIGTERM, signal.SIGINT):
                self._previous[signum] = signal.signal(signum, self._on_signal)
        return self

    def _on_signal(self, signum, frame) -> None:
        name = signal.Signals(signum).name
        if signum == signal.SIGINT and self.signal_name == "SIGINT":
            raise KeyboardInterrupt  # a second Ctrl-C: the user does not want to wait
        self.signal_name = self.signal_name or name
        logging.warning("%s: finishing the current step (or the data build, restore or compile under way), then "
                        "saving and exiting%s", name, "; press Ctrl-C again to stop at once" if name == "SIGINT" else "")
        self.event.set()

    def requested(self) -> bool:
        """A stop asked for before any step (one process; several agree on a step in `reached`)."""
        return jax.process_count() == 1 and self.event.is_set()

    def reached(self, step: int) -> bool:
        if jax.process_count() > 1:
            from jax.experimental import multihost_utils
            return multihost_utils.reached_preemption_sync_point(step)
        return self.event.is_set()

    def __exit__(self, *exc) -> None:
        for signum, previous in self._previous.items():
            signal.signal(signum, previous)


def batch_fingerprint(batch: dict[str, np.ndarray]) -> str:
    """A short digest of a host batch (logged for the first batch: hosts must read different shards)."""
    digest = hashlib.sha1()
    for name in sorted(batch):
        digest.update(name.encode())
        digest.update(np.ascontiguousarray(batch[name]).tobytes())
    return digest.hexdigest()[:16]


def _check_data_position(workdir: epath.Path, step: int, num_processes: int) -> None:
    """Resuming needs this host's saved loader position; a job of another size has none."""
    folder = checkpoint.checkpoint_dir(workdir) / str(step) / "data_iter"
    mine = folder / f"process_{jax.process_index()}-of-{num_processes}.json"
    if folder.is_dir() and not mine.is_file():
        written = sorted(p.name for p in folder.glob("process_*.json"))
        raise TrainConfigError(f"checkpoint step {step} holds loader positions {written}, none for process "
                               f"{jax.process_index()} of {num_processes}; resume with the process count that "
                               "wrote it, or start a new --workdir with --config.train.init set to an export")


def _host_scalars(metrics_list: list[tuple[int, dict[str, jax.Array]]]) -> list[dict[str, Any]]:
    """Device metrics -> one JSON-able record per step. A per-mode loss is kept only for steps whose batch had
    views of that mode (the step reports 0 otherwise, which would draw a false curve)."""
    records = []
    for (step, _), fetched in zip(metrics_list, jax.device_get([m for _, m in metrics_list])):
        record = {"step": step, **{k: float(np.asarray(v)) for k, v in fetched.items()}}
        for mode in ("3d", "2d"):
            if record.get(f"views_{mode}") == 0:
                record.pop(f"loss_{mode}", None)
        records.append(record)
    return records


def run(cfg: mlc.ConfigDict, workdir: str | os.PathLike, *, sample_fn: SampleFn | None = None,
        stop: threading.Event | None = None, allow_config_change: bool = False) -> dict[str, Any]:
    """Train (or resume) in `workdir` until `cfg.train.steps`; returns a summary (steps, losses, timings).

    `allow_config_change`: resume although batch, seeds, data or optimizer settings differ from the checkpoint's
    (train/resume.py; model and trainable-set changes are always refused)."""
    workdir = workdir_lib.as_path(workdir)  # a local folder or gs://...
    check_config(cfg, jax.process_count())
    if not workdir_lib.is_remote(workdir):
        ensure_writable_dir(workdir, "--workdir")  # read-only, full, or a file: one line before any work
    cfg = resolve_config(cfg, workdir)
    with StopSignal(stop) as stopper, lock_lib.hold(workdir, stale_after_s=cfg.train.get("lock_stale_after_s", 600.0)):
        return _run(cfg, workdir, stopper, sample_fn, allow_config_change)


def _stopped_early(summary: dict[str, Any], stopper: StopSignal, manager, where: str) -> dict[str, Any]:
    logging.warning("%s during the %s: no step ran since the last save; exiting", stopper.signal_name or "stop", where)
    manager.close()
    return {**summary, "preempted": True, "signal": stopper.signal_name}


def _run(cfg: mlc.ConfigDict, workdir: epath.Path, stopper: StopSignal, sample_fn: SampleFn | None,
         allow_config_change: bool) -> dict[str, Any]:
    from mvrag_jax.train.trainer import make_mesh, make_trainer  # heavy: models
    num_processes, is_main = jax.process_count(), jax.process_index() == 0
    mesh = make_mesh(cfg)
    trainer = make_trainer(cfg, mesh)
    prepare_data(cfg.data)
    shard = grain.sharding.ShardByJaxProcess(drop_remainder=True)
    data_iter = iter(loader.make_dataset(cfg.data, shard=shard))

    t = cfg.train
    manager = checkpoint.open_manager(workdir, save_every=t.ckpt_every, keep=t.keep_checkpoints)
    start = checkpoint.latest_step(manager)
    summary = {"workdir": str(workdir), "start_step": start or 0, "step": start or 0, "preempted": False,
               "processes": num_processes, "checkpoint_step": start or 0}
    if stopper.requested():
        return _stopped_early(summary, stopper, manager, "data build")
    if start is None:
        state, start = trainer.init(jax.random.key(t.seed)), 0
        logging.info("new run in %s", workdir)
    else:
        def check(step: int) -> None:  # before each restore attempt: what cannot or may not resume
            _check_data_position(workdir, step, num_processes)
            saved = manager.restore(step, args=checkpoint.ocp.args.Composite(
                config=checkpoint.ocp.args.JsonRestore()))["config"]
            resume.check_resume(resume.compare_configs(saved, cfg), allow=allow_config_change, step=step,
                                workdir=workdir)
        state, start, skipped = checkpoint.restore_latest(manager, trainer.abstract_state, data_iter, check=check)
        summary.update(start_step=start, step=start, checkpoint_step=start, skipped_checkpoints=skipped)
        logging.info("resumed %s at step %d", workdir, start)
        if is_main and not workdir_lib.is_remote(workdir):
            metrics.drop_records_after(workdir, start)  # steps after the checkpoint run again: recorded once
    sampler = None
    if sample_fn is None and samples_due(t, start):
        from mvrag_jax.train.samples import make_sample_fn  # heavy: the pipeline
        sample_fn = sampler = make_sample_fn(cfg, trainer)
    rng = jax.random.key(t.seed)
    if stopper.requested():
        return _stopped_early(summary, stopper, manager, "restore")
    if start >= t.steps:
        logging.info("%s already reached train.steps=%d; raise --config.train.steps to go on", workdir, t.steps)
        manager.close()
        return summary

    host_batch = next(data_iter)
    fingerprint = batch_fingerprint(host_batch)
    logging.info("process %d of %d reads data shard %d; first batch %s", jax.process_index(), num_processes,
                 jax.process_index(), fingerprint)
    batch = to_global(host_batch, trainer.batch_sharding)
    compiled, compile_s = trainer.compile(trainer.abstract_batch)
    logging.info("compiled the train step in %.1f s", compile_s)
    if stopper.requested():
        return _stopped_early(summary, stopper, manager, "compile")

    summary.update(compile_s=compile_s, first_batch=fingerprint)
    pending: list[tuple[int, dict[str, jax.Array]]] = []
    examples_per_step = int(t.batch_size)
    step = last_saved = start
    with contextlib.ExitStack() as stack:
        writer = stack.enter_context(metrics.MetricWriter(workdir, enabled=is_main))
        bar = stack.enter_context(tqdm(total=t.steps, initial=start, desc="train", unit="step", disable=not is_main))
        writer.scalar("perf/compile_s", compile_s, start)
        window_start, window_steps, run_start = time.perf_counter(), 0, time.perf_counter()
        while step < t.steps:
            if batch is None:
                batch = to_global(next(data_iter), trainer.batch_sharding)
            state, step_metrics = compiled(state, batch, rng)
            batch, step = None, step + 1
            pending.append((step, step_metrics))
            window_steps += 1
            bar.update(1)
            preempted = stopper.reached(step)
            if step % t.log_every == 0 or step == t.steps or preempted:
                records = _host_scalars(pending)  # waits for the device: the window's time is honest
                elapsed = time.perf_counter() - window_start
                records[-1].update(steps_per_s=window_steps / elapsed,
                                   examples_per_s=window_steps * examples_per_step / elapsed,
                                   skipped_records=loader.skipped_records(data_iter.get_state()))
                writer.write(records, total_steps=t.steps)
                bar.set_postfix(loss=f"{records[-1]['loss']:.4g}")
                summary["last"] = records[-1]
                pending, window_start, window_steps = [], time.perf_counter(), 0
            if sample_fn is not None and t.sample_every > 0 and step % t.sample_every == 0:
                sample_start = time.perf_counter()
                write_samples(sample_fn(state, step), workdir, step, writer)
                sample_s = time.perf_counter() - sample_start
                window_start += sample_s  # not step time: the next record's steps_per_s excludes it
                writer.scalar("perf/sample_s", sample_s, step)
                summary["sample_s"] = summary.get("sample_s", 0.0) + sample_s
                logging.info("samples of step %d in %.1f s (compile included; not step time)", step, sample_s)
            if preempted:
                logging.warning("stopping at step %d (%s); saving", step, stopper.signal_name or "preemption")
                summary.update(preempted=True, signal=stopper.signal_name)
                break
            if checkpoint.save(manager, step, state, data_iter, cfg):
                last_saved = step
                writer.sync()  # a bucket's metrics then cover every checkpointed step
        if last_saved != step:  # the last step, or the preemption step, off the save interval
            checkpoint.save(manager, step, state, data_iter, cfg, force=True)
        manager.wait_until_finished()
        manager.close()
        summary.update(step=step, train_s=time.perf_counter() - run_start)
        if sampler is not None:
            summary["sample_compile_s"] = sampler.compile_seconds
    if is_main:
        png = metrics.plot_loss(workdir)
        summary["loss_png"] = str(png) if png else None
    summary["checkpoint_step"] = step
    return summary


def samples_due(t: mlc.ConfigDict, start: int) -> bool:
    """Whether a multiple of train.sample_every falls in (start, train.steps]."""
    every = int(t.sample_every)
    return every > 0 and int(t.steps) // every > start // every


def launch(cfg: mlc.ConfigDict, workdir: str | os.PathLike, *, coordinator: str | None = None,
           num_processes: int | None = None, process_id: int | None = None, init_timeout_s: float = 300.0,
           multihost: bool = False, sample_fn: SampleFn | None = None,
           allow_config_change: bool = False, num_slices: int | None = None) -> dict[str, Any]:
    """`mvrag train`: join the job (mvrag_jax/cluster/distributed.py; a no-op on one process), split the mesh over
    its slices (train/multislice.py: `num_slices`, None = the devices' own count), then `run`."""
    distributed.initialize(coordinator, num_processes, process_id, timeout_s=init_timeout_s, auto=multihost)
    cfg = multislice.with_slices(cfg, num_slices, jax.devices())
    return run(cfg, workdir, sample_fn=sample_fn, allow_config_change=allow_config_change)


def write_samples(images: dict[str, np.ndarray], workdir: str | os.PathLike, step: int,
                  writer: metrics.MetricWriter) -> None:
    """What `sample_fn` returned -> WORKDIR/samples/<name>_<step>.png (each written atomically) and TensorBoard
    images (process 0)."""
    if not writer.enabled:
        return
    from PIL import Image
    folder = workdir_lib.as_path(workdir) / SAMPLES_SUBDIR
    for name, image in images.items():
        image = np.asarray(image)
        if image.dtype != np.uint8 or image.ndim != 3 or image.shape[-1] != 3:
            raise ValueError(f"sample_fn returned {name!r} as {image.dtype}{list(image.shape)}; return [H, W, 3] uint8")
        png = io.BytesIO()
        Image.fromarray(image).save(png, format="PNG")
        workdir_lib.write_atomic(folder / f"{name}_{step:08d}.png", png.getvalue())
        writer.image(f"samples/{name}", image, step)
