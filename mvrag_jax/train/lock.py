"""One trainer per workdir: WORKDIR/train.lock names its owner and carries a heartbeat.

    with hold(workdir, stale_after_s=600):      # raises WorkdirLockedError when another trainer holds it
        ... train ...

The lock is a JSON file {token, owner, host, pid, processes, started, heartbeat}. Process 0 of a job takes it and
refreshes `heartbeat` every `heartbeat_s` seconds from a thread; the other processes of the same job wait for its
verdict (a broadcast), so all processes of one multi-host job share the one lock and all refuse together.

A second trainer is refused while the heartbeat is younger than `stale_after_s` (train.lock_stale_after_s,
default 600 s: a process that stopped beating for 10 minutes is dead or hung). An older lock is taken over with a
warning; so is one whose owner ran on this host under a pid that no longer exists (a crash on a reused VM), at once.
On a local disk the lock is created with O_EXCL (two starts cannot both win); in a bucket there is no exclusive
create, so a start writes the lock, waits a moment and reads it back: a near-simultaneous second start loses there.
"""

import contextlib
import json
import os
import socket
import threading
import time
import uuid
from typing import Iterator

from absl import logging
from etils import epath

from mvrag_jax.errors import MvragError
from mvrag_jax.train import workdir as workdir_lib

LOCK_FILE = "train.lock"
HEARTBEAT_S = 30.0


class WorkdirLockedError(MvragError):
    """Another trainer holds the workdir's lock (its heartbeat is fresh)."""


def _read(path: epath.Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (FileNotFoundError, json.JSONDecodeError, UnicodeDecodeError):
        return None  # absent, or a torn write from a killed owner: no owner to respect


def _owner_alive(lock: dict) -> bool:
    """False only when the owner provably died: same host, its pid gone."""
    if lock.get("host") != socket.gethostname():
        return True
    try:
        os.kill(int(lock.get("pid", -1)), 0)
    except ProcessLookupError:
        return False
    except (PermissionError, ValueError, OverflowError):
        return True
    return True


class WorkdirLock:
    """The lock of one workdir for this process; `acquire` then `release` (or use `hold`)."""

    def __init__(self, workdir, *, stale_after_s: float = 600.0, heartbeat_s: float = HEARTBEAT_S, processes: int = 1):
        self.path = workdir_lib.as_path(workdir) / LOCK_FILE
        self.stale_after_s, self.heartbeat_s = float(stale_after_s), float(heartbeat_s)
        self.record = {"token": uuid.uuid4().hex, "host": socket.gethostname(), "pid": os.getpid(),
                       "processes": processes, "started": time.time()}
        self.record["owner"] = f"pid {self.record['pid']} on {self.record['host']}"
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _refuse_if_held(self, lock: dict | None) -> None:
        if lock is None or lock.get("token") == self.record["token"]:
            return
        age = time.time() - float(lock.get("heartbeat", 0))
        if age < self.stale_after_s and _owner_alive(lock):
            raise WorkdirLockedError(
                f"{self.path.parent} is in use by another trainer ({lock.get('owner', '?')}, {lock.get('processes', 1)} "
                f"process(es), last heartbeat {age:.0f} s ago); stop it or pass another --workdir. A lock whose "
                f"heartbeat is older than {self.stale_after_s:.0f} s (train.lock_stale_after_s) is taken over")
        logging.warning("taking over the stale lock %s of %s (last heartbeat %.0f s ago%s)", self.path,
                        lock.get("owner", "?"), age, "" if _owner_alive(lock) else ", its process is gone")

    def _write(self, exclusive: bool) -> None:
        data = json.dumps({**self.record, "heartbeat": time.time()}).encode()
        if exclusive and not workdir_lib.is_remote(self.path):
            fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)  # FileExistsError: lost a race
            with os.fdopen(fd, "wb") as f:
                f.write(data)
        else:
            workdir_lib.write_atomic(self.path, data)

    def acquire(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        existing = _read(self.path)
        self._refuse_if_held(existing)
        try:
            self._write(exclusive=existing is None)
        except FileExistsError:  # another start created it between our read and our write
            self._refuse_if_held(_read(self.path))
            self._write(exclusive=False)
        if workdir_lib.is_remote(self.path):
            time.sleep(1.0)  # no exclusive create in a bucket: the last writer wins; check it was us
        if (_read(self.path) or {}).get("token") != self.record["token"]:
            self._refuse_if_held(_read(self.path))
        self._thread = threading.Thread(target=self._beat, name="mvrag-lock-heartbeat", daemon=True)
        self._thread.start()

    def _beat(self) -> None:
        while not self._stop.wait(self.heartbeat_s):
            current = _read(self.path)
            if current is not None and current.get("token") != self.record["token"]:
                logging.error("the workdir lock %s was taken over by %s; this trainer no longer holds it", self.path,
                              current.get("owner", "?"))
                return
            try:
                self._write(exclusive=False)
            except OSError as e:  # a full disk must not kill the run; the lock only ages
                logging.warning("could not refresh the workdir lock %s: %s", self.path, e)

    def release(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        if (_read(self.path) or {}).get("token") == self.record["token"]:
            self.path.unlink(missing_ok=True)


@contextlib.contextmanager
def hold(workdir, *, stale_after_s: float = 600.0, heartbeat_s: float = HEARTBEAT_S) -> Iterator[None]:
    """The workdir's lock for this job: process 0 takes it, every process refuses when it could not."""
    import jax
    from jax.experimental import multihost_utils
    lock, error = None, None
    if jax.process_index() == 0:
        lock = WorkdirLock(workdir, stale_after_s=stale_after_s, heartbeat_s=heartbeat_s,
                           processes=jax.process_count())
        try:
            lock.acquire()
        except WorkdirLockedError as e:
            error = e
    if jax.process_count() > 1:
        import numpy as np
        refused = bool(multihost_utils.broadcast_one_to_all(np.int32(error is not None)))
        if refused and error is None:
            error = WorkdirLockedError(f"{workdir} is in use by another trainer (process 0 could not take "
                                       f"{LOCK_FILE}; its log names the owner)")
    if error is not None:
        raise error
    try:
        yield
    finally:
        if lock is not None:
            lock.release()
