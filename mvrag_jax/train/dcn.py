"""DCN traffic of a compiled multislice program: which collectives cross slices, and how many bytes per step.

    traffic = dcn_traffic(compiled.as_text(), mesh)        # mesh: the program's mesh (sharding.make_mesh, dcn_*)
    traffic["dcn_bytes_per_chip"], traffic["collectives"]  # bytes one chip sends over DCN per call; per-op rows
    seconds = dcn_seconds(traffic, chips_per_host=8, host_gbps=100)

The partitioned HLO names each collective's participants as partition ids (replica groups: an explicit list, an iota
tile `[G,S]<=[dims]T(perm)`, or a mesh `mesh['axis_0'=4,...], device_ids=([2,4]T(1,0)) {'axis_0'}`); partition p
runs on `mesh.devices.flat[p]`, whose slice `sharding.slice_of` knows. A collective whose group spans s > 1 slices
with k members in each moves, per chip, under the hierarchical algorithm (ICI inside a slice, then DCN between
the s slices, each chip carrying its 1/k share; N = the bytes below):
    all-reduce       2 (s-1)/s N / k     N = result bytes
    all-gather       (s-1)/s N / k       N = result bytes (the gathered array)
    reduce-scatter   (s-1)/s N / k       N = operand bytes = result bytes x group size
    all-to-all       (s-1)/s N           N = result bytes
    collective-permute  N x (share of source-target pairs that cross slices)
On TPU, XLA compiles a multislice program per slice: its collectives stay inside the slice (ICI) and what crosses
slices becomes `send`/`recv` host transfers to the Megascale runtime (`_xla_host_transfer_handler_name=
"xla_megascale_runtime"`, `_xla_megascale_transfer_type="ALL_REDUCE"`, ...), each chip sending its 1/k share after
the ICI step. Those count too, per chip, with the same ring factors over the s slices (all-reduce 2 (s-1)/s x the
bytes sent, other transfer types (s-1) x them: each slice's share reaches the s-1 others); s is the number of
slices of the program (the DCN groups of a dcn_data x dcn_fsdp split with both > 1 are smaller: an upper bound).
A collective inside a while loop counts once per trip when XLA records the trip count (`known_trip_count`), as the
microbatch scan of the update program does; else once (then `uncounted_loops` > 0).
"""

import collections
import math
import re
from typing import Any

import numpy as np

from mvrag_jax import sharding

COLLECTIVES = ("all-reduce", "all-gather", "reduce-scatter", "all-to-all", "collective-permute")
_DTYPE_BYTES = {"pred": 1, "s4": 0.5, "u4": 0.5, "s8": 1, "u8": 1, "f8e4m3fn": 1, "f8e5m2": 1, "s16": 2, "u16": 2,
                "f16": 2, "bf16": 2, "s32": 4, "u32": 4, "f32": 4, "s64": 8, "u64": 8, "f64": 8, "c64": 8,
                "c128": 16}
_OP = re.compile(r"^\s*(?:ROOT\s+)?%?(?P<name>[\w.\-]+)\s*=\s*(?P<shape>.*?)\s(?P<op>" + "|".join(COLLECTIVES)
                 + r")(?P<start>-start)?\(")
_ARRAY = re.compile(r"\b([a-z]+[0-9]*[a-z0-9]*)\[([0-9,]*)\]")
_COMPUTATION = re.compile(r"^(?:ENTRY\s+)?%?(?P<name>[\w.\-]+)\s.*\{\s*$")
_CALLEE = re.compile(r"\b(?:calls|to_apply|body|condition|true_computation|false_computation|branch_computations)="
                     r"\{?(%[\w.\-]+(?:,\s*%[\w.\-]+)*|[\w.\-]+)\}?")
_TRIPS = re.compile(r'"known_trip_count":\{"n":"(\d+)"\}')
_MEGASCALE_SEND = re.compile(r"^\s*(?:ROOT\s+)?%?[\w.\-]+\s*=\s*(?P<shape>\(.*?\))\s+send\(.*xla_megascale_runtime")
_TRANSFER = re.compile(r'_xla_megascale_transfer_type="(\w+)"')


class HloParseError(ValueError):
    """A collective whose participants this module cannot read (an HLO spelling it does not know)."""


def _bytes(shape_text: str) -> float:
    """Bytes of an HLO shape: one array `bf16[4,8]{1,0}` or a tuple of them (summed)."""
    total = 0.0
    for dtype, dims in _ARRAY.findall(shape_text):
        if dtype in _DTYPE_BYTES:
            total += _DTYPE_BYTES[dtype] * math.prod(int(d) for d in dims.split(",") if d)
    return total


def _iota(dims: list[int], perm: list[int] | None) -> np.ndarray:
    ids = np.arange(math.prod(dims)).reshape(dims)
    return ids if perm is None else ids.transpose(perm)


def _ints(text: str | None) -> list[int] | None:
    return None if text is None else [int(v) for v in text.split(",") if v.strip()]


def replica_groups(line: str, num_partitions: int) -> list[list[int]]:
    """The partition-id groups of one collective's HLO line (every spelling XLA prints), or [] when it has none."""
    explicit = re.search(r"replica_groups=\{((?:\{[0-9,\s]*\},?\s*)*)\}", line)
    if explicit:
        groups = [_ints(g) for g in re.findall(r"\{([0-9,\s]*)\}", explicit[1])]
        return [g for g in groups if g] or [list(range(num_partitions))]
    iota = re.search(r"replica_groups=\[(\d+),(\d+)\]<=\[([0-9,]+)\](?:T\(([0-9,]+)\))?", line)
    if iota:
        return _iota(_ints(iota[3]), _ints(iota[4])).reshape(int(iota[1]), int(iota[2])).tolist()
    mesh = re.search(r"replica_groups=mesh\[([^\]]*)\]", line)
    if mesh:
        axes = [(name, int(size)) for name, size in re.findall(r"'([^']+)'=(\d+)", mesh[1])]
        ids_match = re.search(r"device_ids=\(\[([0-9,]+)\](?:T\(([0-9,]+)\))?\)", line)
        sizes = [size for _, size in axes]
        ids = (np.arange(math.prod(sizes)) if ids_match is None else
               _iota(_ints(ids_match[1]), _ints(ids_match[2])).reshape(-1)).reshape(sizes)
        chosen = re.search(r"\)?\s*\{((?:'[^']+',?\s*)+)\}", line[mesh.end():])
        if chosen is None:
            raise HloParseError(f"collective with mesh replica groups but no axis set: {line.strip()[:200]}")
        names = re.findall(r"'([^']+)'", chosen[1])
        unknown = [n for n in names if n not in dict(axes)]
        if unknown:
            raise HloParseError(f"collective over unknown mesh axes {unknown}: {line.strip()[:200]}")
        inside = [i for i, (n, _) in enumerate(axes) if n in names]
        outside = [i for i in range(len(axes)) if i not in inside]
        grouped = ids.transpose(outside + inside).reshape(-1, math.prod(sizes[i] for i in inside) if inside else 1)
        return grouped.tolist()
    return []


def _source_target_pairs(line: str) -> list[tuple[int, int]]:
    found = re.search(r"source_target_pairs=\{((?:\{\d+,\d+\},?)*)\}", line)
    return [] if not found else [tuple(map(int, p)) for p in re.findall(r"\{(\d+),(\d+)\}", found[1])]


def _multipliers(lines: list[str]) -> tuple[dict[str, int], int]:
    """Computation name -> times it runs per call of the entry (while bodies x their known trip count), and how
    many while loops had no known trip count (counted once)."""
    callees: dict[str, list[tuple[str, int]]] = collections.defaultdict(list)
    entry, current, unknown = None, None, 0
    for line in lines:
        head = _COMPUTATION.match(line)
        if head and "=" not in line.split("{")[0].split("(")[0]:
            current = head["name"]
            entry = current if line.startswith("ENTRY") else entry
            continue
        if current is None:
            continue
        trips = 1
        if re.search(r"\swhile\(", line):
            found = _TRIPS.search(line)
            trips = int(found[1]) if found else 1
            unknown += found is None
        for match in _CALLEE.finditer(line):
            for name in match[1].split(","):
                kind = match[0].split("=")[0]
                callees[current].append((name.strip().lstrip("%"), trips if kind == "body" else 1))
    times: dict[str, int] = collections.defaultdict(int)
    stack = [(entry, 1)] if entry else []
    while stack:
        name, n = stack.pop()
        times[name] += n
        stack.extend((callee, n * k) for callee, k in callees.get(name, ()))
    return times, unknown


def dcn_traffic(hlo_text: str, mesh: Any, num_slices: int | None = None) -> dict[str, Any]:
    """The collectives of a compiled program (`compiled.as_text()`) whose participants span slices, with the bytes
    one chip sends over DCN per program call (module docstring) summed over them. `num_slices`: for devices without
    slice_index (CPU), the emulated slices (consecutive device ids) make_mesh grouped them into."""
    devices = list(mesh.devices.flat)
    slices = sharding.slice_of(sorted(devices, key=lambda d: d.id), num_slices)
    slice_of_partition = np.array([slices[d.id] for d in devices])
    lines = hlo_text.splitlines()
    times, uncounted = _multipliers(lines)
    rows: dict[tuple, dict[str, Any]] = {}
    current, total_ops = None, 0
    for line in lines:
        head = _COMPUTATION.match(line)
        if head and "=" not in line.split("{")[0].split("(")[0]:
            current = head["name"]
            continue
        send = _MEGASCALE_SEND.match(line)
        if send is not None:
            kind = (_TRANSFER.search(line) or [None, "UNKNOWN"])[1]
            span = max(len(set(slice_of_partition.tolist())), 2)
            sent = _largest_array(send["shape"])
            factor = 2 * (span - 1) / span if kind == "ALL_REDUCE" else span - 1
            _add(rows, f"megascale {kind.lower()}", span, 1, sent, sent * factor, times.get(current, 1) or 1)
            continue
        op = _OP.match(line)
        if op is None:
            continue
        total_ops += 1
        kind, result = op["op"], _bytes(op["shape"])
        if op["start"] and kind in ("all-gather", "collective-permute", "all-to-all"):
            result = _largest_array(op["shape"])  # an (operand, result) tuple: the result is the larger array
        if kind == "collective-permute":
            pairs = _source_target_pairs(line)
            crossing = sum(slice_of_partition[a] != slice_of_partition[b] for a, b in pairs)
            if not crossing:
                continue
            per_chip, span, members = result * crossing / len(pairs), 2, 1
        else:
            groups = replica_groups(line, len(devices)) or [list(range(len(devices)))]
            group = groups[0]
            span = len({int(slice_of_partition[p]) for p in group})
            if span < 2:
                continue
            members = len(group) // span  # per slice
            n = result * len(group) if kind == "reduce-scatter" else result
            fraction = (span - 1) / span
            per_chip = {"all-reduce": 2 * fraction * n / members, "all-gather": fraction * n / members,
                        "reduce-scatter": fraction * n / members, "all-to-all": fraction * n}[kind]
        _add(rows, kind, span, members, result, per_chip, times.get(current, 1) or 1)
    collectives = sorted(rows.values(), key=lambda r: -r["dcn_bytes_per_chip"])
    return {"dcn_bytes_per_chip": float(sum(r["dcn_bytes_per_chip"] for r in collectives)),
            "cross_slice_collectives": int(sum(r["count"] for r in collectives)),
            "collectives_total": total_ops, "uncounted_loops": uncounted, "collectives": collectives[:10]}


def _add(rows: dict, kind: str, span: int, members: int, result: float, per_chip: float, count: int) -> None:
    row = rows.setdefault((kind, span, members, result), {
        "op": kind, "slices": span, "members_per_slice": members, "result_bytes": int(result), "count": 0,
        "dcn_bytes_per_chip": 0.0})
    row["count"] += count
    row["dcn_bytes_per_chip"] += per_chip * count


def _largest_array(shape_text: str) -> float:
    sizes = [_bytes(f"{dtype}[{dims}]") for dtype, dims in _ARRAY.findall(shape_text)]
    return max(sizes, default=0.0)


def dcn_seconds(traffic: dict[str, Any], chips_per_host: int, host_gbps: float) -> float:
    """Seconds per program call the DCN bytes take when each host's chips share `host_gbps` Gbit/s of DCN (no
    overlap with compute: an upper bound of the exposed time)."""
    return traffic["dcn_bytes_per_chip"] * chips_per_host * 8 / (host_gbps * 1e9)
