"""mvrag_jax/sharding.py over several slices: the hybrid mesh (emulated slices of fake CPU devices, and fake TPU
devices that carry a slice_index, as libtpu's compile-only devices do)."""

import dataclasses
import textwrap

import pytest

from mvrag_jax import sharding
from tests.train.conftest import run_python


@dataclasses.dataclass(frozen=True)
class FakeTpu:
    id: int
    slice_index: int


def test_device_slices_group_by_slice_index_else_consecutive_ids():
    devices = [FakeTpu(i, s) for s, i in ((1, 4), (0, 0), (1, 5), (0, 1))]
    assert [[d.id for d in g] for g in sharding.device_slices(devices)] == [[0, 1], [4, 5]]
    assert sharding.slice_of(devices) == {0: 0, 1: 0, 4: 1, 5: 1}
    plain = [type("Cpu", (), {"id": i})() for i in range(6)]
    assert [[d.id for d in g] for g in sharding.device_slices(plain, 3)] == [[0, 1], [2, 3], [4, 5]]
    with pytest.raises(sharding.ShardingRuleError, match="do not split into 4 emulated slices"):
        sharding.device_slices(plain, 4)


def test_mesh_sizes_read_the_dcn_fields_with_default_one():
    assert sharding.mesh_sizes({"data": 2, "fsdp": -1, "tensor": 1}) == {
        "data": 2, "fsdp": -1, "tensor": 1, "dcn_data": 1, "dcn_fsdp": 1}


_MESHES = textwrap.dedent("""
    import jax
    from mvrag_jax import sharding
    ids = lambda mesh: [[d.id for d in row] for row in mesh.devices[:, :, 0]]
    # two emulated slices (devices 0-3, 4-7): data runs across them, fsdp inside each
    m = sharding.make_mesh(1, 4, 1, dcn_data=2)
    print(dict(m.shape), ids(m))
    # dcn_fsdp: the fsdp axis is slice-major too; ICI data=2 inside each slice
    m = sharding.make_mesh(2, 2, 1, dcn_fsdp=2)
    print(dict(m.shape), ids(m))
    m = sharding.make_mesh(1, -1, 1, dcn_data=2)
    print(dict(m.shape))
    for kwargs in ({"fsdp": 3, "dcn_data": 2}, {"fsdp": -1, "dcn_data": -1}, {"fsdp": 4, "dcn_data": 3}):
        try:
            sharding.make_mesh(**kwargs)
        except sharding.ShardingRuleError as e:
            print("error", e)
""")


def test_hybrid_mesh_puts_slices_on_the_outer_part_of_the_dcn_axis():
    proc = run_python(_MESHES, XLA_FLAGS="--xla_force_host_platform_device_count=8")
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = proc.stdout.strip().splitlines()
    assert lines[0] == "{'data': 2, 'fsdp': 4, 'tensor': 1} [[0, 1, 2, 3], [4, 5, 6, 7]]"
    assert lines[1] == "{'data': 2, 'fsdp': 4, 'tensor': 1} [[0, 1, 4, 5], [2, 3, 6, 7]]"
    assert lines[2] == "{'data': 2, 'fsdp': 4, 'tensor': 1}"
    assert "(inside one slice) needs 3 devices, each of the 2 slices has 4" in lines[3]
    assert "number of slices cannot be inferred" in lines[4]
    assert "do not split into 3 emulated slices" in lines[5]


def test_devices_of_several_slices_need_the_dcn_split():
    devices = [FakeTpu(i, i // 4) for i in range(8)]
    with pytest.raises(sharding.ShardingRuleError, match="span 2 slices.*dcn_data=2"):
        sharding.make_mesh(1, 4, 1, devices=devices)
    with pytest.raises(sharding.ShardingRuleError, match="needs 4 slices, the devices form 2"):
        sharding.make_mesh(1, 2, 1, devices=devices, dcn_data=4)
