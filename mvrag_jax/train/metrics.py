"""What a training run records: one JSON line per step, TensorBoard scalars (tensorboardX, no TensorFlow), log
lines, and a loss-curve PNG at the end.

    WORKDIR/metrics.jsonl   {"step": 12, "loss": 0.61, "loss_3d": ..., "grad_norm": ..., "steps_per_s": ...}
    WORKDIR/tb/             events.out.tfevents.*  (tensorboard --logdir WORKDIR/tb)
    WORKDIR/loss.png        loss (and loss per mode) against step, over every run that wrote to this workdir

A resumed run appends; steps it repeats (after a crash between checkpoints) replace the earlier records when read.
Only process 0 writes (`enabled=False` elsewhere).

In a bucket (gs://...: no appends, no partial updates) every sync uploads only what is new, so a days-long run
uploads each byte once: the records since the last sync as one part object `WORKDIR/metrics/<run>-<part>.jsonl`
(workdir.PartLog; `read_metrics` reads them in order after any `metrics.jsonl`), and the TensorBoard events since
the last sync as one closed event file in `WORKDIR/tb/` (TensorBoard reads a folder's event files in name order,
which is their order of writing). Syncs happen in `sync()` (the loop calls it after each checkpoint save), in `write`
at most every `sync_every_s` seconds, and on close. Each object appears whole, so a reader never sees part of one; a
process killed between syncs loses only records of steps after its last checkpoint, which the resumed run writes
again.
"""

import io
import json
import math
import os
import pathlib
import shutil
import tempfile
import time
import uuid
from typing import Any, Iterable

import numpy as np
from absl import logging
from etils import epath

from mvrag_jax.train import workdir as workdir_lib

METRICS_FILE = "metrics.jsonl"
METRICS_PARTS = "metrics"  # a bucket workdir's records: metrics/<run>-<part>.jsonl
TB_DIR = "tb"
LOSS_PNG = "loss.png"


class MetricWriter:
    """Step records -> JSONL + TensorBoard + a log line per call of `write`."""

    def __init__(self, workdir: str | os.PathLike, *, enabled: bool = True, sync_every_s: float = 60.0):
        self.workdir = workdir_lib.as_path(workdir)
        self.enabled = enabled
        self.sync_every_s = sync_every_s
        self.remote = workdir_lib.is_remote(self.workdir)
        self._tb = self._jsonl = self._parts = self._staging = None
        self._pending: list[str] = []  # a bucket's records since the last sync
        self._segment, self._run_id = 0, uuid.uuid4().hex[:8]
        self._last_sync = time.monotonic()
        if not enabled:
            return
        if self.remote:
            self._parts = workdir_lib.PartLog(self.workdir / METRICS_PARTS, ".jsonl")
            self._staging = pathlib.Path(tempfile.mkdtemp(prefix="mvrag_tb_"))  # event files until their upload
        else:
            self.workdir.mkdir(parents=True, exist_ok=True)
            self._jsonl = open(self.workdir / METRICS_FILE, "a")

    def _board(self):
        """The TensorBoard writer, made on first use: in a bucket one per sync segment (its own event file; an
        idle segment leaves no file), locally one for the whole run."""
        if self._tb is None:
            import tensorboardX  # only the writing process needs it
            if self.remote:
                # Event files are named by start second and host; the run id and segment number keep the names of
                # one run in writing order and apart from another run's started in the same second.
                self._tb = tensorboardX.SummaryWriter(str(self._staging / TB_DIR),
                                                      filename_suffix=f".{self._run_id}.{self._segment:06d}")
            else:
                self._tb = tensorboardX.SummaryWriter(str(self.workdir / TB_DIR))
        return self._tb

    def write(self, records: Iterable[dict[str, Any]], *, total_steps: int | None = None) -> None:
        """One record per step ({"step": int, name: float, ...}); the last one is also logged as a line."""
        if not self.enabled:
            return
        last = None
        for record in records:
            step = int(record["step"])
            for name, value in record.items():
                if name != "step":
                    self._board().add_scalar(f"train/{name}", value, step)
            line = json.dumps(record) + "\n"
            if self.remote:
                self._pending.append(line)
            else:
                self._jsonl.write(line)
            last = record
        if not self.remote:
            self._jsonl.flush()
            if self._tb is not None:
                self._tb.flush()
        if time.monotonic() - self._last_sync >= self.sync_every_s:
            self.sync()
        if last is not None:
            logging.info("step %d%s %s", last["step"], f"/{total_steps}" if total_steps else "",
                         " ".join(f"{k}={_fmt(v)}" for k, v in last.items() if k != "step"))

    def scalar(self, name: str, value: float, step: int) -> None:
        """A one-off value (compile time) for TensorBoard and the log."""
        if self.enabled:
            self._board().add_scalar(name, value, step)
            self._board().flush()
            logging.info("%s=%s (step %d)", name, _fmt(value), step)

    def image(self, name: str, image: np.ndarray, step: int) -> None:
        """A [H, W, 3] uint8 image (e.g. a sample grid) for TensorBoard."""
        if self.enabled:
            self._board().add_image(name, image, step, dataformats="HWC")
            self._board().flush()

    def sync(self) -> int:
        """Upload what was written since the last sync (a bucket workdir; a local one is always up to date): the
        new records as one part, the segment's event file closed and uploaded. Returns the bytes uploaded."""
        self._last_sync = time.monotonic()
        if not (self.enabled and self.remote):
            return 0
        sent = self._parts.append("".join(self._pending).encode())
        self._pending = []
        if self._tb is not None:
            self._tb.close()  # waits for tensorboardX's writer thread: the file holds every event so far
            self._tb, self._segment = None, self._segment + 1
            sent += workdir_lib.upload_folder(self._staging / TB_DIR, self.workdir / TB_DIR)
        return sent

    def close(self) -> None:
        if not self.enabled:
            return
        try:
            self.sync()
        finally:
            if self._tb is not None:
                self._tb.close()
            if self._jsonl is not None:
                self._jsonl.close()
            if self._staging is not None:
                shutil.rmtree(self._staging, ignore_errors=True)

    def __enter__(self) -> "MetricWriter":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _fmt(value: float) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def read_metrics(workdir: str | os.PathLike) -> list[dict[str, Any]]:
    """Records of every run in `workdir` (metrics.jsonl, then a bucket's parts), one per step (a repeated step's
    latest record wins), by step."""
    workdir = workdir_lib.as_path(workdir)
    path = workdir / METRICS_FILE
    chunks = [path.read_bytes()] if path.is_file() else []
    chunks += workdir_lib.read_parts(workdir / METRICS_PARTS, ".jsonl")  # a bucket workdir's records
    by_step = {}
    for line in b"".join(chunks).decode().splitlines():
        if line.strip():
            record = json.loads(line)
            by_step[record["step"]] = record
    return [by_step[s] for s in sorted(by_step)]


def plot_loss(workdir: str | os.PathLike, out: str | os.PathLike | None = None) -> epath.Path | None:
    """Write the loss curve (raw loss, its running mean, and the mean loss per mode) as a PNG, atomically.
    None when there are no records yet."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg  # no pyplot: no global backend state
    from matplotlib.figure import Figure
    records = read_metrics(workdir)
    if not records:
        return None
    workdir = workdir_lib.as_path(workdir)
    out = epath.Path(out or workdir / LOSS_PNG)
    steps = np.array([r["step"] for r in records])
    fig = Figure(figsize=(7, 4), dpi=100)
    ax = fig.add_subplot()
    loss = np.array([r.get("loss", math.nan) for r in records], np.float64)
    ax.plot(steps, loss, color="0.7", lw=0.8, label="loss")
    window = max(1, len(loss) // 20)
    if window > 1:
        smooth = np.convolve(loss, np.ones(window) / window, mode="valid")
        ax.plot(steps[window - 1:], smooth, color="k", lw=1.5, label=f"loss, mean of {window}")
    for name in sorted({k for r in records for k in r if k.startswith("loss_")}):
        values = np.array([r.get(name, math.nan) for r in records], np.float64)
        ax.plot(steps, values, lw=1.0, marker=".", ms=3, ls="none" if np.isnan(values).any() else "-", label=name)
    ax.set(xlabel="step", ylabel="loss", title=f"training loss ({workdir.name})")
    ax.grid(alpha=0.3)
    ax.legend(loc="upper right", fontsize=8)
    fig.tight_layout()
    png = io.BytesIO()
    FigureCanvasAgg(fig).print_png(png)
    workdir_lib.write_atomic(out, png.getvalue())
    return out


def drop_records_after(workdir: str | os.PathLike, step: int) -> int:
    """Remove the records of steps after `step` from a local workdir's metrics.jsonl (atomically); returns how many.

    A resume from checkpoint `step` runs those steps again (they were logged before a kill, after the last save), so
    the file then holds each step once."""
    path = workdir_lib.as_path(workdir) / METRICS_FILE
    if not path.is_file():
        return 0
    lines = path.read_text().splitlines(keepends=True)
    kept = [line for line in lines if not line.strip() or json.loads(line)["step"] <= step]
    if len(kept) != len(lines):
        workdir_lib.write_atomic(path, "".join(kept).encode())
    return len(lines) - len(kept)
