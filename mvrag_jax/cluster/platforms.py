"""Which JAX platforms a command uses, decided at the CLI entry before any backend starts.

With libtpu installed (requirements-tpu.txt) on a machine without TPUs, JAX would try to start the TPU backend and
print libtpu's initialisation errors on every command. `default_platforms()` keeps such machines on CPU (and CUDA
when its plugin is installed); on a TPU VM, or when JAX_PLATFORMS is set, JAX chooses as usual.
"""

import glob
import importlib.util
import os


def tpu_hardware_present() -> bool:
    """True on a TPU VM: TPU chips appear as /dev/accel* (v2-v5e) or under /dev/vfio (v5p, v6e)."""
    return bool(glob.glob("/dev/accel*")) or os.path.isdir("/dev/vfio")


def _installed(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except ModuleNotFoundError:  # a parent package (e.g. the jax_plugins namespace) is absent
        return False


def default_platforms() -> str | None:
    """A jax_platforms value that skips the TPU backend where libtpu is installed but no TPU is attached, else None."""
    if os.environ.get("JAX_PLATFORMS") or tpu_hardware_present() or not _installed("libtpu"):
        return None
    cuda = any(_installed(f"jax_plugins.xla_cuda{v}") for v in (12, 13))
    return "cuda,cpu" if cuda else "cpu"


def compile_only_tpu_env(accelerator_type: str) -> dict[str, str]:
    """Environment for describing a TPU slice with libtpu on a machine without TPUs (ahead-of-time compiles).

    Without these libtpu queries the GCE metadata server and logs errors about the missing TPU worker; several
    compile-only processes may hold libtpu at once since none of them owns a chip.
    """
    if tpu_hardware_present():
        return {}
    return {"TPU_SKIP_MDS_QUERY": "1", "TPU_ACCELERATOR_TYPE": accelerator_type, "TPU_WORKER_ID": "0",
            "TPU_WORKER_HOSTNAMES": "localhost", "ALLOW_MULTIPLE_LIBTPU_LOAD": "1"}
