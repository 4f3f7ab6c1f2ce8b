"""Training over several TPU slices joined by DCN (multislice): how many slices this job has and the mesh split.

    cfg = with_slices(cfg, num_slices=2, devices=jax.devices())   # cfg.mesh.dcn_data = 2 unless a DCN split is set

On Cloud TPU the runtime of a multislice queued resource (`--node-count N`) sets MEGASCALE_NUM_SLICES,
MEGASCALE_SLICE_ID and MEGASCALE_COORDINATOR_ADDRESS on every worker; `jax.distributed.initialize()` reads them
(process ids run slice-major) and every device carries its `slice_index`. Devices without one (CPU) are grouped
into emulated slices of consecutive devices (sharding.make_mesh), which the tests use.
"""

import os
from typing import Any, Mapping, Sequence

from mvrag_jax import sharding
from mvrag_jax.errors import MvragError


class MultisliceError(MvragError, ValueError):
    """The requested slice count and the job's devices or mesh disagree; the message names the fix."""


def device_slice_count(devices: Sequence[Any]) -> int | None:
    """Slices the devices belong to (their distinct slice_index values); None for devices without one (CPU)."""
    if not devices or getattr(devices[0], "slice_index", None) is None:
        return None
    return len({int(d.slice_index) for d in devices})


def runtime_slice_count(env: Mapping[str, str] = os.environ) -> int | None:
    """MEGASCALE_NUM_SLICES of the Cloud TPU multislice runtime, if set."""
    value = env.get("MEGASCALE_NUM_SLICES", "").strip()
    return int(value) if value.isdigit() else None


def with_slices(cfg: Any, num_slices: int | None, devices: Sequence[Any],
                env: Mapping[str, str] = os.environ) -> Any:
    """`cfg` with its mesh split over the job's slices: `num_slices` (None: what the devices say) must match the
    devices' slices; without a DCN split in cfg.mesh the slices run data parallel (mesh.dcn_data = slices, as
    MaxText's default). Devices without slice_index (CPU) take `num_slices` emulated slices."""
    found = device_slice_count(devices)
    if num_slices is None:
        num_slices = found or 1
    if num_slices < 1:
        raise MultisliceError(f"--num_slices {num_slices}: give a positive number of slices")
    if found is not None and found != num_slices:
        runtime = runtime_slice_count(env)
        raise MultisliceError(
            f"--num_slices {num_slices}, but this job's devices form {found} slice(s) (MEGASCALE_NUM_SLICES="
            f"{runtime if runtime is not None else 'unset'}); create the slices as one queued resource with "
            f"--node-count {num_slices} (launch/tpu_train.sh --num_slices {num_slices}) and start every worker with "
            "--multihost, or pass the job's own slice count")
    dcn = {k: int(cfg.mesh.get(k, 1)) for k in sharding.DCN_AXES}
    if num_slices == 1:
        if dcn != {k: 1 for k in dcn}:
            raise MultisliceError(f"--config.mesh has a DCN split {dcn} but the job has one slice; set "
                                  "--config.mesh.dcn_data=1 --config.mesh.dcn_fsdp=1 or pass --num_slices")
        return cfg
    if all(v == 1 for v in dcn.values()):
        cfg.mesh.dcn_data = num_slices
    elif -1 not in dcn.values() and dcn["dcn_data"] * dcn["dcn_fsdp"] != num_slices:
        raise MultisliceError(f"--config.mesh.dcn_data={dcn['dcn_data']} x dcn_fsdp={dcn['dcn_fsdp']} != "
                              f"{num_slices} slices; make their product {num_slices}")
    return cfg
