"""mvrag_jax/train/dcn.py: replica groups in every HLO spelling, loop trip counts, and the DCN bytes of a real
compiled program on a hybrid mesh of two emulated slices (8 fake CPU devices)."""

import json
import textwrap
import types

from mvrag_jax.train import dcn
from tests.train.conftest import run_python


def test_replica_groups_in_explicit_iota_and_mesh_spellings():
    assert dcn.replica_groups("x = f32[4] all-reduce(y), replica_groups={{0,1},{2,3}}, to_apply=%a", 4) == \
        [[0, 1], [2, 3]]
    assert dcn.replica_groups("x = f32[4] all-reduce(y), replica_groups={}, to_apply=%a", 4) == [[0, 1, 2, 3]]
    assert dcn.replica_groups("replica_groups=[2,4]<=[8]", 8) == [[0, 1, 2, 3], [4, 5, 6, 7]]
    assert dcn.replica_groups("replica_groups=[4,2]<=[2,4]T(1,0)", 8) == [[0, 4], [1, 5], [2, 6], [3, 7]]
    # XLA's mesh form: ids = iota [2,4] transposed -> [4,2], laid on mesh (4, 1, 2); groups vary along axis_2
    line = ("all-reduce(%p), channel_id=3, replica_groups=mesh['axis_0'=4,'axis_1'=1,'axis_2'=2], "
            "device_ids=([2,4]T(1,0)) {'axis_2'}, use_global_device_ids=true")
    assert dcn.replica_groups(line, 8) == [[0, 4], [1, 5], [2, 6], [3, 7]]
    line = line.replace("{'axis_2'}", "{'axis_0'}")
    assert dcn.replica_groups(line, 8) == [[0, 1, 2, 3], [4, 5, 6, 7]]


def _mesh(num_devices):
    return types.SimpleNamespace(devices=types.SimpleNamespace(
        flat=[types.SimpleNamespace(id=i) for i in range(num_devices)]))


def test_a_collective_in_a_while_body_counts_once_per_known_trip():
    hlo = textwrap.dedent("""\
        %body (p: f32[8]) -> f32[8] {
          %ar = f32[256]{0} all-reduce(f32[256]{0} %x), replica_groups={{0,2},{1,3}}, to_apply=%add
        }
        %cond (p: f32[8]) -> pred[] {
          ROOT %c = pred[] constant(true)
        }
        ENTRY %main (a: f32[8]) -> f32[8] {
          %w = f32[8] while(f32[8] %a), condition=%cond, body=%body, backend_config={"known_trip_count":{"n":"3"}}
          %local = f32[64]{0} all-reduce(f32[64]{0} %y), replica_groups={{0,1},{2,3}}, to_apply=%add
        }
        """)
    traffic = dcn.dcn_traffic(hlo, _mesh(4), num_slices=2)  # slices {0,1}, {2,3}
    # the loop's all-reduce crosses (groups {0,2}): 2 (s-1)/s N / k = 2 * 1/2 * 1024 B / 1, three trips
    assert traffic["dcn_bytes_per_chip"] == 3 * 1024 and traffic["cross_slice_collectives"] == 3
    assert traffic["collectives_total"] == 2 and traffic["uncounted_loops"] == 0


_PROGRAM = textwrap.dedent("""
    import json
    import jax, jax.numpy as jnp
    from jax.sharding import NamedSharding, PartitionSpec as P
    from mvrag_jax import sharding
    from mvrag_jax.train import dcn
    loss = lambda w, x: jnp.sum((x @ w) ** 2)
    for split in ({"dcn_data": 2}, {"dcn_fsdp": 2}):
        mesh = sharding.make_mesh(1, 4, 1, **split)
        w = jax.ShapeDtypeStruct((64, 32), jnp.float32, sharding=NamedSharding(mesh, P("fsdp")))
        x = jax.ShapeDtypeStruct((16, 64), jnp.float32, sharding=NamedSharding(mesh, P(("data", "fsdp"))))
        grad = jax.jit(jax.grad(loss), out_shardings=NamedSharding(mesh, P("fsdp")))
        print(json.dumps(dcn.dcn_traffic(grad.lower(w, x).compile().as_text(), mesh, 2)))
""")


def test_dcn_bytes_of_a_compiled_fsdp_gradient_on_two_emulated_slices():
    proc = run_python(_PROGRAM, XLA_FLAGS="--xla_force_host_platform_device_count=8")
    assert proc.returncode == 0, proc.stderr[-3000:]
    data, fsdp = (json.loads(line) for line in proc.stdout.strip().splitlines()[-2:])
    # dcn_data: weights gather inside a slice; only the gradient shard (64x32 f32 / 4 = 2 KiB) is all-reduced
    # across the 2 slices, one member per slice: 2 * 1/2 * 2048 B
    assert data["dcn_bytes_per_chip"] == 2048
    assert [(r["op"], r["slices"], r["members_per_slice"]) for r in data["collectives"]] == [("all-reduce", 2, 1)]
    # dcn_fsdp: the weight gather itself spans both slices, so DCN carries more
    assert fsdp["dcn_bytes_per_chip"] > data["dcn_bytes_per_chip"]
    assert "all-gather" in {r["op"] for r in fsdp["collectives"]}


# A cross-slice gradient all-reduce as libtpu 0.0.42 compiles it for 2 x v5e:2x4 (dcn_data=2, fsdp=8): the slice's
# program (8 partitions) reduce-scatters on ICI and sends each chip's 1/8 share to the Megascale runtime.
_MEGASCALE_HLO = """\
ENTRY %main (a: f32[32,128]) -> f32[32,128] {
  %all-reduce.3 = f32[256,128]{1,0:T(8,128)} all-reduce(%input), channel_id=3, replica_groups={{0,1,2,3,4,5,6,7}}, use_global_device_ids=true, to_apply=%add.clone
  %send = (f32[4,8,128]{2,1,0:T(8,128)}, u32[], token[]) send(%bitcast.1, %after-all), channel_id=2, is_host_transfer=true, frontend_attributes={_xla_host_transfer_handler_name="xla_megascale_runtime",_xla_host_transfer_rendezvous="all-reduce.1_0",_xla_megascale_reduce_operation="SUM",_xla_megascale_target="{1,2}x{0:7}",_xla_megascale_transfer_type="ALL_REDUCE"}
}
"""


def test_megascale_sends_of_a_tpu_multislice_program_count_as_dcn():
    devices = [types.SimpleNamespace(id=100000 * (1 + s) + i, slice_index=s) for s in (0, 1) for i in range(8)]
    mesh = types.SimpleNamespace(devices=types.SimpleNamespace(flat=devices))
    traffic = dcn.dcn_traffic(_MEGASCALE_HLO, mesh)
    # the in-slice all-reduce stays on ICI; the send of 4*8*128 f32 = 16 KiB, all-reduced over 2 slices: 2 * 1/2
    assert traffic["dcn_bytes_per_chip"] == 16384 and traffic["cross_slice_collectives"] == 1
    assert traffic["collectives"][0]["op"] == "megascale all_reduce"
