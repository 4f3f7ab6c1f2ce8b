"""Joining a multi-host run: `jax.distributed.initialize` with a deadline that ends in a message, not a hang.

    initialize(auto=True)                                  # Cloud TPU pod: everything comes from the TPU metadata
    initialize("10.0.0.2:8476", num_processes=2, process_id=1, timeout_s=300)   # anywhere else
    initialize()                                           # single process: nothing to join

If a peer never arrives, JAX's coordination client aborts the whole process from C++ (no Python exception) after
its own timeout, with a stack trace that does not say who was missing. So a watchdog thread fires first: it prints
which coordinator this process waited at and which process ids may be missing, and exits with status 2.
"""

import os
import sys
import threading

import jax

from mvrag_jax.errors import UsageError

# JAX's own deadline sits this far behind ours, so our message is what the user sees.
_JAX_TIMEOUT_MARGIN_S = 60


def missing_processes_message(coordinator: str | None, num_processes: int | None, process_id: int | None,
                              timeout_s: float) -> str:
    """The watchdog's message: who waited where, and which ids may be missing."""
    if num_processes is None or process_id is None:
        return (f"distributed initialization did not finish within {timeout_s:g} s (coordinator "
                f"{coordinator or 'from the environment'}); check that every host of the slice started the job")
    others = [i for i in range(num_processes) if i != process_id]
    missing = f"process {others[0]}" if len(others) == 1 else f"one of processes {others}"
    where = "at its own coordinator service" if process_id == 0 else "for the coordinator (process 0)"
    return (f"process {process_id} of {num_processes} waited {timeout_s:g} s {where} at {coordinator} but {missing} "
            f"never connected; start every process with --coordinator {coordinator} --num_processes {num_processes} "
            f"and its own --process_id in 0..{num_processes - 1}, or raise --init_timeout")


def initialize(coordinator: str | None = None, num_processes: int | None = None, process_id: int | None = None, *,
               timeout_s: float = 300.0, auto: bool = False) -> None:
    """Join the job: with `coordinator`, or with `auto` (cluster auto-detection, e.g. Cloud TPU); otherwise a
    single-process run and a no-op. Exits with status 2 and a message on stderr if all processes have not
    connected within `timeout_s`."""
    if not coordinator and not auto:
        if num_processes not in (None, 1):
            raise UsageError(f"--num_processes {num_processes} needs --coordinator HOST:PORT (process 0's address)")
        return
    if num_processes is not None and process_id is not None and not 0 <= process_id < num_processes:
        raise UsageError(f"--process_id {process_id} is outside 0..{num_processes - 1}; give each of the "
                         f"--num_processes {num_processes} processes its own id")
    if timeout_s <= 0:
        raise UsageError(f"distributed init timeout {timeout_s} s; pass a positive --init_timeout")
    done = threading.Event()

    def watchdog():
        if not done.wait(timeout_s):
            message = missing_processes_message(coordinator, num_processes, process_id, timeout_s)
            print(f"mvrag: error: {message}", file=sys.stderr, flush=True)
            os._exit(2)  # the main thread is blocked inside C++; nothing else can end it cleanly

    threading.Thread(target=watchdog, name="distributed-init-watchdog", daemon=True).start()
    try:
        jax.distributed.initialize(coordinator, num_processes, process_id,
                                   initialization_timeout=int(timeout_s) + _JAX_TIMEOUT_MARGIN_S)
    finally:
        done.set()

