"""The one sharding vocabulary of mvrag-jax.

Modules name array axes with the logical constants below (never mesh axis names); `DEFAULT_RULES` maps them onto the
(data, fsdp, tensor) mesh, as flax's lm1b example does. Configs may override rules through `make_rules`, which rejects
names this module does not know.

Several slices (multislice, DCN between them) keep the same three axes and the same rules, as MaxText does:
`make_mesh(data=1, fsdp=8, dcn_data=2)` builds JAX's hybrid device mesh, whose `data` axis (size 2 = 2 slices x 1)
runs across slices and whose `fsdp` axis stays inside each slice's ICI, so BATCH splits over slices and the
parameter all-gathers never leave a slice. `dcn_fsdp` shards parameters across slices too (their gathers then
cross DCN every step). Devices without a `slice_index` (CPU) are grouped into emulated slices of consecutive ids.
"""

from typing import Any, Callable, Sequence

import flax.linen as nn
import jax
import numpy as np
from jax.experimental import mesh_utils
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec

from mvrag_jax.errors import MvragError

MESH_AXES = ("data", "fsdp", "tensor")
# Sizes across slices (DCN) and the mesh axis each multiplies; the within-slice sizes keep the axis names.
DCN_AXES = {"dcn_data": "data", "dcn_fsdp": "fsdp"}

# Logical axis names. Parameters:
EMBED = "embed"          # model width of a dense kernel's input side
MLP = "mlp"              # hidden width of feed-forward layers
HEADS = "heads"          # attention heads x head dim (flattened projection outputs)
VOCAB = "vocab"          # token / position tables
CONV_IN = "conv_in"      # conv kernel input channels
CONV_OUT = "conv_out"    # conv kernel output channels
NORM = "norm"            # norm scales/biases and other small vectors: replicated
# Activations:
BATCH = "batch"          # examples (views folded in: [b * views, ...])
VIEWS = "views"          # the view axis where it is explicit
LENGTH = "length"        # tokens / spatial positions
ACT_EMBED = "act_embed"  # activation channels

DEFAULT_RULES: tuple[tuple[str, Any], ...] = (
    (BATCH, ("data", "fsdp")),
    (VIEWS, None),
    (LENGTH, None),
    (ACT_EMBED, None),
    (EMBED, "fsdp"),
    (CONV_IN, "fsdp"),
    (MLP, "tensor"),
    (HEADS, "tensor"),
    (CONV_OUT, "tensor"),
    (VOCAB, "tensor"),
    (NORM, None),
)
LOGICAL_NAMES = tuple(name for name, _ in DEFAULT_RULES)


class ShardingRuleError(MvragError, ValueError):
    """A sharding rule names an unknown logical axis or mesh axis."""


def make_rules(overrides: Sequence[tuple[str, Any]] = ()) -> tuple[tuple[str, Any], ...]:
    """DEFAULT_RULES with `overrides` (logical name -> mesh axis, tuple of axes, or None) replacing their entries."""
    rules = dict(DEFAULT_RULES)
    for name, target in overrides:
        if name not in rules:
            raise ShardingRuleError(f"unknown logical axis {name!r} in sharding rules; known: {', '.join(LOGICAL_NAMES)}")
        targets = target if isinstance(target, (tuple, list)) else (target,)
        for axis in targets:
            if axis is not None and axis not in MESH_AXES:
                raise ShardingRuleError(
                    f"rule {name!r} -> {target!r} names mesh axis {axis!r}; mesh axes are {', '.join(MESH_AXES)}")
        rules[name] = tuple(target) if isinstance(target, list) else target
    return tuple(rules.items())


def _fill(sizes: list[int], total: int, what: str) -> list[int]:
    """`sizes` with its one -1 (if any) set so that their product is `total`; an error naming the sizes otherwise."""
    if sizes.count(-1) > 1:
        raise ShardingRuleError(f"at most one mesh axis may be -1, got {what} sizes {sizes}")
    known = int(np.prod([s for s in sizes if s != -1]))
    if -1 in sizes:
        if total % known:
            raise ShardingRuleError(f"{total} {what} are not divisible by the fixed sizes {sizes} (product {known})")
        sizes = [total // known if s == -1 else s for s in sizes]
    return sizes


def device_slices(devices: Sequence[jax.Device], num_slices: int | None = None) -> list[list[jax.Device]]:
    """`devices` grouped by slice, in slice order: by `slice_index` (TPU, compile-only TPU), else (CPU) into
    `num_slices` emulated slices of consecutive devices."""
    devices = list(devices)
    if devices and getattr(devices[0], "slice_index", None) is not None:
        groups: dict[int, list] = {}
        for d in devices:
            groups.setdefault(int(d.slice_index), []).append(d)
        return [groups[k] for k in sorted(groups)]
    n = num_slices or 1
    if len(devices) % n:
        raise ShardingRuleError(f"{len(devices)} devices do not split into {n} emulated slices")
    per = len(devices) // n
    return [devices[i * per:(i + 1) * per] for i in range(n)]


def slice_of(devices: Sequence[jax.Device], num_slices: int | None = None) -> dict[int, int]:
    """Device id -> its slice (see `device_slices`)."""
    return {d.id: i for i, group in enumerate(device_slices(devices, num_slices)) for d in group}


def make_mesh(data: int = 1, fsdp: int = -1, tensor: int = 1, devices: Sequence[jax.Device] | None = None, *,
              dcn_data: int = 1, dcn_fsdp: int = 1) -> Mesh:
    """A (data, fsdp, tensor) mesh over `devices` (default: all); one axis may be -1 to take the remaining devices.

    With `dcn_data` x `dcn_fsdp` > 1 (several slices) data/fsdp/tensor are the sizes inside one slice and the mesh is
    JAX's hybrid device mesh: axis `data` has size dcn_data x data with the slice as its outer part, `fsdp` likewise.
    One DCN size may be -1 to take the remaining slices. Devices that span several slices need the DCN split.
    """
    devices = list(jax.devices() if devices is None else devices)
    slices = device_slices(devices)
    dcn = [dcn_data, dcn_fsdp]
    if dcn == [1, 1] and len(slices) > 1:
        raise ShardingRuleError(
            f"the devices span {len(slices)} slices; give the split across them, e.g. --config.mesh.dcn_data="
            f"{len(slices)} (mvrag plan: --mesh dcn_data={len(slices)},...)")
    if dcn == [1, 1]:
        sizes = _fill([data, fsdp, tensor], len(devices), "devices")
        if int(np.prod(sizes)) != len(devices):
            raise ShardingRuleError(
                f"mesh data={sizes[0]} x fsdp={sizes[1]} x tensor={sizes[2]} needs {int(np.prod(sizes))} devices, "
                f"{len(devices)} are available; change the mesh sizes so their product is {len(devices)}")
        return jax.make_mesh(tuple(sizes), MESH_AXES, axis_types=(AxisType.Auto,) * 3, devices=devices)
    emulated = len(slices) == 1  # devices without slices (CPU, or one TPU slice): emulate dcn_data x dcn_fsdp slices
    if emulated and -1 in dcn:
        raise ShardingRuleError(f"dcn_data={dcn_data}, dcn_fsdp={dcn_fsdp}: these devices form one slice, so the "
                                "number of slices cannot be inferred; give both DCN sizes")
    num_slices = int(np.prod(dcn)) if emulated else len(slices)
    dcn = _fill(dcn, num_slices, "slices")
    if int(np.prod(dcn)) != num_slices:
        raise ShardingRuleError(
            f"dcn_data={dcn[0]} x dcn_fsdp={dcn[1]} needs {int(np.prod(dcn))} slices, the devices form {num_slices}; "
            f"set the DCN sizes so their product is {num_slices}")
    if emulated:
        slices = device_slices(devices, num_slices)
    per_slice = len(slices[0])
    ici = _fill([data, fsdp, tensor], per_slice, "devices per slice")
    if int(np.prod(ici)) != per_slice:
        raise ShardingRuleError(
            f"mesh data={ici[0]} x fsdp={ici[1]} x tensor={ici[2]} (inside one slice) needs {int(np.prod(ici))} "
            f"devices, each of the {num_slices} slices has {per_slice}; make their product {per_slice}")
    if emulated:  # CPU: no slice_index to group by; the emulated slices in order, each reshaped to the ICI mesh
        blocks = np.empty((num_slices, per_slice), dtype=object)
        blocks[:] = slices
        grid = blocks.reshape(dcn + ici).transpose(0, 2, 1, 3, 4).reshape(dcn[0] * ici[0], dcn[1] * ici[1], ici[2])
    else:
        grid = mesh_utils.create_hybrid_device_mesh(ici, dcn + [1], devices, allow_split_physical_axes=True)
    return Mesh(grid, MESH_AXES, axis_types=(AxisType.Auto,) * 3)


def mesh_sizes(mesh_cfg: Any) -> dict[str, int]:
    """make_mesh keyword sizes from a config mesh block (data, fsdp, tensor and the optional dcn_data, dcn_fsdp)."""
    return {k: int(mesh_cfg.get(k, 1)) for k in MESH_AXES + tuple(DCN_AXES)}


def _fit_spec(spec: PartitionSpec, shape: Sequence[int], mesh: Mesh) -> PartitionSpec:
    """Drop mesh axes from dimensions they do not divide (small configs), so any release config can be sharded."""
    fitted = []
    for dim, axes in zip(shape, tuple(spec) + (None,) * (len(shape) - len(spec))):
        names = () if axes is None else (axes if isinstance(axes, tuple) else (axes,))
        kept = tuple(a for a in names if dim % mesh.shape[a] == 0)
        size = int(np.prod([mesh.shape[a] for a in kept])) if kept else 1
        while kept and dim % size:
            kept = kept[:-1]
            size = int(np.prod([mesh.shape[a] for a in kept])) if kept else 1
        fitted.append(None if not kept else kept[0] if len(kept) == 1 else kept)
    return PartitionSpec(*fitted)


def activation_spec(logical: Sequence[str | None], shape: Sequence[int], mesh: Any) -> PartitionSpec:
    """The mesh spec of an activation with logical axes `logical` under the active `nn.logical_axis_rules`, with mesh
    axes that do not divide their dimension dropped (for `shard_map` around a per-device kernel)."""
    return _fit_spec(nn.logical_to_mesh_axes(tuple(logical)), shape, mesh)


def abstract_state(init_fn: Callable[..., Any], mesh: Mesh, rules=DEFAULT_RULES, *args) -> tuple[Any, Any]:
    """(shapes, shardings) of `init_fn(*args)` without allocating it: eval_shape -> partition specs -> NamedShardings.

    Returned shapes are unboxed (plain `ShapeDtypeStruct` leaves); `jax.jit(init_fn, out_shardings=shardings)` then
    creates the state directly sharded.
    """
    # Under the mesh, so device-specific code traced by init (an attention kernel) sees the target platform.
    with jax.set_mesh(mesh), nn.logical_axis_rules(rules):
        boxed = jax.eval_shape(init_fn, *args)
        specs = nn.get_partition_spec(boxed)
    shapes = nn.unbox(boxed)
    shardings = jax.tree.map(
        lambda spec, shape: NamedSharding(mesh, _fit_spec(
            nn.logical_to_mesh_axes(spec, rules) if _is_logical(spec) else spec, shape.shape, mesh)),
        specs, shapes, is_leaf=lambda x: isinstance(x, PartitionSpec))
    return shapes, shardings


def _is_logical(spec: PartitionSpec) -> bool:
    return any(isinstance(a, str) and a not in MESH_AXES for a in spec)


def init_sharded(init_fn: Callable[..., Any], mesh: Mesh, rules=DEFAULT_RULES, *args) -> Any:
    """Run `init_fn(*args)` so that every leaf is born with its sharding (never materialised on one device)."""
    _, shardings = abstract_state(init_fn, mesh, rules, *args)
    with jax.set_mesh(mesh), nn.logical_axis_rules(rules):
        return jax.jit(lambda *a: nn.unbox(init_fn(*a)), out_shardings=shardings)(*args)


def check_sharded(params: Any, mesh: Mesh, tolerance: float = 0.02) -> None:
    """Raise if more than `tolerance` of the parameter bytes are fully replicated on a multi-device mesh.

    The error names the five largest replicated tensors so the missing rule is easy to find.
    """
    if mesh.size == 1:
        return
    leaves = jax.tree_util.tree_leaves_with_path(params)
    total = sum(x.size for _, x in leaves)
    replicated = [(jax.tree_util.keystr(p), x.shape, x.size) for p, x in leaves
                  if x.sharding.is_fully_replicated]
    fraction = sum(s for _, _, s in replicated) / max(total, 1)
    if fraction > tolerance:
        largest = sorted(replicated, key=lambda r: -r[2])[:5]
        names = "; ".join(f"{p} {tuple(s)}" for p, s, _ in largest)
        raise ShardingRuleError(
            f"{fraction:.1%} of parameters are replicated (tolerance {tolerance:.1%}); largest: {names}. "
            "Give these params logical axis names or add a rule mapping their names to a mesh axis.")


def batch_shards() -> int:
    """How many ways the active mesh splits BATCH under the active logical rules (1 without a mesh)."""
    mesh = jax.sharding.get_abstract_mesh()
    if mesh.empty:
        return 1
    axes = nn.logical_to_mesh_axes((BATCH,))[0]
    names = () if axes is None else (axes if isinstance(axes, tuple) else (axes,))
    return int(np.prod([mesh.shape[a] for a in names])) if names else 1


def batch_pieces(x: jax.Array, pieces: int) -> jax.Array:
    """[n, ...] -> [pieces, n / pieces, ...] where every piece holds the same number of each device's own rows (no
    data moves): row d*per_device + c*rows + j (device d, piece c) -> [c, d*rows + j]. Each device's rows must split
    into `pieces` (per-device rows divisible by it); rows not split evenly over the devices count as one device."""
    n, shards = x.shape[0], batch_shards()
    if n % shards:
        shards = 1
    if (n // shards) % pieces:
        raise ValueError(f"{n // shards} rows per device do not split into {pieces} pieces")
    rows, tail = n // shards // pieces, x.shape[1:]
    out = x.reshape((shards, pieces, rows) + tail).swapaxes(0, 1).reshape((pieces, shards * rows) + tail)
    return nn.with_logical_constraint(out, (None, BATCH) + (None,) * len(tail))


def unbatch_pieces(y: jax.Array) -> jax.Array:
    """The inverse of `batch_pieces`: [pieces, m, ...] -> [pieces * m, ...] in the original row order."""
    pieces, m, tail = y.shape[0], y.shape[1], y.shape[2:]
    shards = batch_shards()
    if (pieces * m) % shards or m % shards:
        shards = 1
    y = y.reshape((pieces, shards, m // shards) + tail).swapaxes(0, 1).reshape((pieces * m,) + tail)
    return nn.with_logical_constraint(y, (BATCH,) + (None,) * len(tail))


def map_batch_chunks(fn: Callable[[jax.Array], Any], x: jax.Array, max_rows: int) -> Any:
    """`fn(x)` computed in sequential pieces of at most `max_rows` rows per device (the largest divisor of each
    device's rows that fits), so a forward-only pass keeps 1/chunks of its activations live. Every piece holds the
    same number of each device's own rows (`batch_pieces`: no data moves); rows must be independent under `fn` (a
    per-row model). `max_rows` <= 0 or >= the rows per device: one piece, `fn(x)`."""
    n, shards = x.shape[0], batch_shards()
    if n % shards:
        shards = 1  # rows not split evenly over the devices: pieces of the whole axis
    per_device = n // shards
    if max_rows <= 0 or max_rows >= per_device:
        return fn(x)
    rows = max(r for r in range(1, max_rows + 1) if per_device % r == 0)
    rest = (None,) * (x.ndim - 1)
    out = jax.lax.map(lambda piece: fn(nn.with_logical_constraint(piece, (BATCH,) + rest)),
                      batch_pieces(x, per_device // rows))
    return jax.tree.map(unbatch_pieces, out)
