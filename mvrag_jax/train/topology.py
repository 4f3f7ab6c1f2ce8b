"""Target hardware for ahead-of-time plans: chip facts (HBM, peak bf16 FLOP/s), topology names and their devices.

    topology = parse_topology("v5e:2x4")       # or "v5litepod-8", "v4-8", "v5p:2x2x1", "v6e-8", "cpu:8"
    topology = parse_topology("v5e:2x4", num_slices=2)   # two slices over DCN: 16 devices, slice_index 0 and 1
    devices = topology_devices(topology)       # compile-only TPU devices from libtpu, or fake CPU devices

TPU topologies need libtpu (requirements-tpu.txt) but no TPU: libtpu describes the slice and XLA compiles for it.
`cpu:N` needs N host devices, which must be requested before JAX starts its backends (`mvrag plan` does that with
`jax_num_cpu_devices`; elsewhere set XLA_FLAGS=--xla_force_host_platform_device_count=N).
"""

import dataclasses
import math
import re
from typing import Any

import jax

from mvrag_jax.errors import MvragError

GIB = 1024 ** 3


@dataclasses.dataclass(frozen=True)
class Chip:
    hbm_bytes: int          # HBM per chip (one JAX device; v4/v5p run as megacore, two TensorCores per device)
    peak_bf16_flops: float  # dense bf16 peak per chip, FLOP/s
    libtpu_name: str        # chip prefix of libtpu topology names
    chip_config: str        # libtpu chip_config_name: "megacore" for two-core chips
    cores_per_chip: int     # GCP accelerator types count TensorCores: v4-8 is 4 chips


CHIPS = {
    "v4": Chip(32 * GIB, 275e12, "v4", "megacore", 2),
    "v5e": Chip(16 * GIB, 197e12, "v5e", "default", 1),
    "v5p": Chip(95 * GIB, 459e12, "v5", "megacore", 2),
    "v6e": Chip(32 * GIB, 918e12, "v6e", "default", 1),
}
# GCP accelerator-type prefixes (`gcloud compute tpus tpu-vm create --accelerator-type v5litepod-8`).
_GCP_PREFIX = {"v4": "v4", "v5e": "v5litepod", "v5p": "v5p", "v6e": "v6e"}
_ALIASES = {"v5litepod": "v5e", "v5lite": "v5e", "v5": "v5p", "v6": "v6e"}
# Chips per host (x, y, z): v5e/v6e single-host slices of 8 chips sit on one host; larger slices have 4 per host.
_HOST_BOUNDS_SMALL, _HOST_BOUNDS = (2, 4, 1), (2, 2, 1)


class TopologyError(MvragError, ValueError):
    """A topology name that cannot be parsed, or devices that cannot be provided."""


@dataclasses.dataclass(frozen=True)
class Topology:
    chip: str                  # "cpu" or a CHIPS key
    dims: tuple[int, ...]      # chip grid (x, y[, z]) of one slice; (n,) for cpu
    num_slices: int = 1        # slices joined over DCN (multislice); cpu: emulated slices of n devices each

    @property
    def devices_per_slice(self) -> int:
        return math.prod(self.dims)

    @property
    def num_devices(self) -> int:
        return self.devices_per_slice * self.num_slices

    @property
    def platform(self) -> str:
        return "cpu" if self.chip == "cpu" else "tpu"

    @property
    def name(self) -> str:
        """v5e:2x4, and 2xv5e:2x4 for two slices of it."""
        one = f"{self.chip}:{'x'.join(map(str, self.dims))}"
        return one if self.num_slices == 1 else f"{self.num_slices}x{one}"

    @property
    def hbm_bytes(self) -> int | None:
        return CHIPS[self.chip].hbm_bytes if self.chip in CHIPS else None

    @property
    def peak_flops(self) -> float | None:
        return CHIPS[self.chip].peak_bf16_flops if self.chip in CHIPS else None

    @property
    def accelerator_type(self) -> str | None:
        """The GCP accelerator type of one slice (v5e:2x4 -> v5litepod-8, v4:2x2x1 -> v4-8); None for cpu."""
        if self.chip == "cpu":
            return None
        return f"{_GCP_PREFIX[self.chip]}-{self.devices_per_slice * CHIPS[self.chip].cores_per_chip}"

    @property
    def chips_per_host(self) -> int:
        """Chips one TPU VM host drives (8 for single-host v5e/v6e slices of 8, else at most 4); cpu: all of a slice."""
        if self.chip == "cpu":
            return self.devices_per_slice
        return math.prod(_host_bounds(self))


def _grid(chips: int, three_d: bool) -> tuple[int, ...]:
    """The standard chip grid of a slice of `chips` chips (a power of two): 8 -> 2x4 (2D) or 2x2x2 (3D)."""
    if chips < 1 or chips & (chips - 1):
        raise TopologyError(f"{chips} chips is not a power of two; give the grid explicitly, e.g. v5e:2x4")
    if not three_d:  # 4 -> 2x2, 8 -> 2x4, 16 -> 4x4, 32 -> 4x8, ...
        x = 2 ** ((chips.bit_length() - 1) // 2)
        return (x, chips // x)
    if chips < 4:
        return (1, 1, chips)
    dims = [2, 2, 1]  # then double the smallest dim, last first: 2x2x2, 2x2x4, 2x4x4, 4x4x4, 4x4x8, ...
    while dims[0] * dims[1] * dims[2] < chips:
        smallest = min(dims)
        dims[max(i for i, d in enumerate(dims) if d == smallest)] *= 2
    return tuple(dims)


def parse_topology(text: str, num_slices: int = 1) -> Topology:
    """`cpu:N`, `<chip>:<x>x<y>[x<z>]` (v4, v5e, v5p, v6e) or a GCP accelerator type (`v5litepod-8`, `v4-8`): one
    slice; `num_slices` of them joined over DCN (multislice)."""
    if num_slices < 1:
        raise TopologyError(f"--num-slices {num_slices}: give a positive number of slices")
    text = text.strip().lower()
    known = "cpu:N, v5e:2x4, v4:2x2x1, v5p:2x2x2, v6e:4x4 or a GCP accelerator type such as v5litepod-8 or v4-8"
    match = re.fullmatch(r"([a-z0-9]+):(\d+(?:x\d+)*)", text)
    if match:
        chip, dims = _ALIASES.get(match[1], match[1]), tuple(int(d) for d in match[2].split("x"))
        if chip == "cpu":
            if len(dims) != 1:
                raise TopologyError(f"topology {text!r}: cpu takes one device count, e.g. cpu:8")
        elif chip not in CHIPS:
            raise TopologyError(f"topology {text!r}: unknown chip {match[1]!r}; use {known}")
        elif len(dims) != (3 if CHIPS[chip].chip_config == "megacore" else 2):
            raise TopologyError(f"topology {text!r}: {chip} grids have "
                                f"{3 if CHIPS[chip].chip_config == 'megacore' else 2} dims, e.g. {chip}:"
                                f"{'2x2x1' if CHIPS[chip].chip_config == 'megacore' else '2x4'}")
    else:
        match = re.fullmatch(r"([a-z0-9]+)-(\d+)", text)
        chip = _ALIASES.get(match[1], match[1]) if match else None
        if chip not in CHIPS:
            raise TopologyError(f"topology {text!r} is not understood; use {known}")
        cores = int(match[2])
        if cores % CHIPS[chip].cores_per_chip:
            raise TopologyError(f"{text}: {chip} accelerator types count TensorCores, two per chip (e.g. {chip}-8)")
        dims = _grid(cores // CHIPS[chip].cores_per_chip, three_d=CHIPS[chip].chip_config == "megacore")
    if any(d < 1 for d in dims):
        raise TopologyError(f"topology {text!r}: every dimension must be >= 1")
    return Topology(chip, dims, num_slices)


def _host_bounds(topology: Topology) -> tuple[int, int, int]:
    """Chips per host (x, y, z) of a TPU slice: one host for single-host v5e/v6e slices of 8, else 2x2x1."""
    dims = topology.dims + (1,) * (3 - len(topology.dims))
    small = topology.devices_per_slice == 8 and CHIPS[topology.chip].chip_config == "default"
    return tuple(min(h, d) for h, d in zip(_HOST_BOUNDS_SMALL if small else _HOST_BOUNDS, dims))  # slice < one host


def topology_devices(topology: Topology) -> list[Any]:
    """The devices to compile for: compile-only TPU devices from libtpu, or the first N CPU devices."""
    if topology.platform == "cpu":
        devices = jax.devices("cpu")
        if len(devices) < topology.num_devices:
            raise TopologyError(
                f"{topology.name} needs {topology.num_devices} CPU devices, this process has {len(devices)}: run "
                f"`mvrag plan` (it requests them) or set XLA_FLAGS=--xla_force_host_platform_device_count="
                f"{topology.num_devices} before JAX starts")
        return devices[:topology.num_devices]
    from jax.experimental import topologies  # noqa: PLC0415 (TPU only: loads libtpu)
    chip = CHIPS[topology.chip]
    try:
        desc = topologies.get_topology_desc(
            platform="tpu", topology_name=f"{chip.libtpu_name}:{'x'.join(map(str, topology.dims))}",
            chip_config_name=chip.chip_config, chips_per_host_bounds=_host_bounds(topology),
            num_slices=topology.num_slices, wrap=(False, False, False))
    except jax.errors.JaxRuntimeError as e:
        raise TopologyError(f"libtpu cannot describe {topology.name}: {str(e).splitlines()[0]}; use a slice shape "
                            "GCP offers (e.g. v5e:2x4, v5e:4x4, v4:2x2x2)") from e
    except RuntimeError as e:
        if "not installed" in str(e):
            raise TopologyError(f"{topology.name} needs libtpu to describe the slice (no TPU needed): "
                                "pip install -r requirements-tpu.txt, or plan for cpu:N") from e
        raise
    return list(desc.devices)
