"""What a training run records: one JSON line per step, TensorBoard scalars (tensorboardX, no TensorFlow), log
lines, and a loss-curve PNG at the end.

    WORKDIR/metrics.jsonl   {"step": 12, "loss": 0.61, "loss_3d": ..., "grad_norm": ..., "steps_per_s": ...}
    WORKDIR/tb/             events.out.tfevents.*  (tensorboard --logdir WORKDIR/tb)
    WORKDIR/loss.png        loss (and loss per mode) against step, over every run that wrote to this workdir

A resumed run appends; steps it repeats (after a crash between checkpoints) replace the earlier records when read.
Only process 0 writes (`enabled=False` elsewhere).

In a bucket (gs://...: no appends) the JSONL and the event files are written to a local staging folder
(workdir.Mirror; metrics.jsonl starts as a copy of the bucket's) and uploaded whole: by `sync()` (the loop calls it
after each checkpoint save), by `write` at most every `sync_every_s` seconds, and on close. Each upload replaces the
object at once, so a reader never sees a half-written file; a process killed between syncs loses only records of
steps after its last checkpoint, which the resumed run writes again.
"""

import io
import json
import math
import os
import time
import uuid
from typing import Any, Iterable

import numpy as np
from absl import logging
from etils import epath

from mvrag_jax.train import workdir as workdir_lib

METRICS_FILE = "metrics.jsonl"
TB_DIR = "tb"
LOSS_PNG = "loss.png"


class MetricWriter:
    """Step records -> JSONL + TensorBoard + a log line per call of `write`."""

    def __init__(self, workdir: str | os.PathLike, *, enabled: bool = True, sync_every_s: float = 60.0):
        self.workdir = workdir_lib.as_path(workdir)
        self.enabled = enabled
        self.sync_every_s = sync_every_s
        self._tb = self._jsonl = self._mirror = None
        self._last_sync = time.monotonic()
        if enabled:
            import tensorboardX  # only the writing process needs it
            if workdir_lib.is_remote(self.workdir):
                self._mirror = workdir_lib.Mirror(self.workdir)
                jsonl, local = self._mirror.seed(METRICS_FILE), self._mirror.local
                # Event files are named by start second and host; a random suffix keeps a run started in the same
                # second from replacing another's upload (locally, both would share one file).
                suffix = f".{uuid.uuid4().hex[:8]}"
            else:
                self.workdir.mkdir(parents=True, exist_ok=True)
                jsonl, local, suffix = self.workdir / METRICS_FILE, self.workdir, ""
            self._tb = tensorboardX.SummaryWriter(str(local / TB_DIR), filename_suffix=suffix)
            self._jsonl = open(jsonl, "a")

    def write(self, records: Iterable[dict[str, Any]], *, total_steps: int | None = None) -> None:
        """One record per step ({"step": int, name: float, ...}); the last one is also logged as a line."""
        if not self.enabled:
            return
        last = None
        for record in records:
            step = int(record["step"])
            for name, value in record.items():
                if name != "step":
                    self._tb.add_scalar(f"train/{name}", value, step)
            self._jsonl.write(json.dumps(record) + "\n")
            last = record
        self._jsonl.flush()
        self._tb.flush()
        if time.monotonic() - self._last_sync >= self.sync_every_s:
            self.sync()
        if last is not None:
            logging.info("step %d%s %s", last["step"], f"/{total_steps}" if total_steps else "",
                         " ".join(f"{k}={_fmt(v)}" for k, v in last.items() if k != "step"))

    def scalar(self, name: str, value: float, step: int) -> None:
        """A one-off value (compile time) for TensorBoard and the log."""
        if self.enabled:
            self._tb.add_scalar(name, value, step)
            self._tb.flush()
            logging.info("%s=%s (step %d)", name, _fmt(value), step)

    def image(self, name: str, image: np.ndarray, step: int) -> None:
        """A [H, W, 3] uint8 image (e.g. a sample grid) for TensorBoard."""
        if self.enabled:
            self._tb.add_image(name, image, step, dataformats="HWC")
            self._tb.flush()

    def sync(self) -> None:
        """Upload what was written so far (a bucket workdir; a local one is always up to date)."""
        self._last_sync = time.monotonic()
        if self._mirror is not None:
            self._jsonl.flush()
            self._drain_tensorboard()
            self._mirror.sync()

    def _drain_tensorboard(self, timeout_s: float = 10.0) -> None:
        """tensorboardX writes events from a background thread and its flush() does not wait for that thread's
        queue: wait until the queue is empty and the event file stops changing, so a sync uploads every event
        written so far (and the next sync has nothing left over to upload)."""
        queue = getattr(self._tb.file_writer.event_writer, "_event_queue", None)
        files = lambda: sorted((p.name, p.stat().st_size) for p in (self._mirror.local / TB_DIR).glob("*"))
        deadline, before = time.monotonic() + timeout_s, None
        while time.monotonic() < deadline:
            self._tb.flush()
            now = files()
            if (queue is None or queue.empty()) and now == before:
                return
            before = now
            time.sleep(0.02)

    def close(self) -> None:
        if self.enabled:
            self._tb.close()
            self._jsonl.close()
            if self._mirror is not None:
                self._mirror.close()

    def __enter__(self) -> "MetricWriter":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _fmt(value: float) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def read_metrics(workdir: str | os.PathLike) -> list[dict[str, Any]]:
    """Records of every run in `workdir`, one per step (a repeated step's latest record wins), by step."""
    path = workdir_lib.as_path(workdir) / METRICS_FILE
    by_step = {}
    if path.is_file():
        for line in path.read_text().splitlines():
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
