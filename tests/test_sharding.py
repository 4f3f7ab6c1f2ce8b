"""The tiny UNet born sharded on 8 fake CPU devices (mvrag_jax/sharding.py + the UNet's logical names).

Fake devices must be configured before jax initialises, so the check runs in a subprocess with XLA_FLAGS set; it
prints one JSON line per mesh and the tests assert on those.
"""

import json
import os
import pathlib
import subprocess
import sys
import textwrap

import pytest

REPO = pathlib.Path(__file__).parents[1]
MESHES = {"fsdp8": {"data": 1, "fsdp": 8, "tensor": 1}, "data2_fsdp2_tensor2": {"data": 2, "fsdp": 2, "tensor": 2}}

SCRIPT = textwrap.dedent("""
    import functools, json, sys
    import flax.linen as nn
    import jax
    import numpy as np
    from configs import tiny
    from mvrag_jax import sharding
    from mvrag_jax.models.unet import MultiViewUNet, UNetConfig, init_params

    meshes = json.loads(sys.argv[1])
    config = UNetConfig.from_config(tiny.get_config())
    model = MultiViewUNet(config)
    with np.load("tests/reference/cases/unet_forward_ip.npz") as case:  # 2 objects x 4 views, image tokens present
        inputs = (np.transpose(case["x"], (0, 2, 3, 1)), case["timesteps"], case["context"], case["camera"],
                  case["images_tokens"], case["scale"])
    single_device = jax.jit(model.apply)
    for name, sizes in meshes.items():
        mesh = sharding.make_mesh(**sizes)
        # rbg keys: sampling compiles much faster on CPU than threefry, and the values are incidental here.
        params = sharding.init_sharded(functools.partial(init_params, config), mesh, sharding.DEFAULT_RULES,
                                       jax.random.key(0, impl="unsafe_rbg"))
        try:
            sharding.check_sharded(params, mesh)
            replication_error = None
        except sharding.ShardingRuleError as e:
            replication_error = str(e)
        with jax.default_matmul_precision("highest"):
            with jax.set_mesh(mesh), nn.logical_axis_rules(sharding.DEFAULT_RULES):
                sharded_apply = jax.jit(model.apply)
                constraints = sharded_apply.lower({"params": params}, *inputs).as_text().count("sharding_constraint")
                sharded = np.asarray(sharded_apply({"params": params}, *inputs))
            reference = np.asarray(single_device({"params": jax.tree.map(np.asarray, params)}, *inputs))
        to_k_ip = params["input_blocks_1_1"]["transformer_blocks_0"]["attn2"]["to_k_ip"]["kernel"]
        conv = params["input_blocks_3_0"]["in_layers_2"]["kernel"]
        print(json.dumps({
            "mesh": name,
            "devices": len(jax.devices()),
            "activation_constraints": constraints,
            "replication_error": replication_error,
            "max_abs_diff": float(np.abs(sharded - reference).max()),
            "allclose": bool(np.allclose(sharded, reference, atol=1e-5, rtol=1e-5)),
            "finite": bool(np.isfinite(sharded).all()),
            "to_k_ip_spec": [str(axis) for axis in to_k_ip.sharding.spec],
            "to_k_ip_shard_fraction": to_k_ip.addressable_shards[0].data.size / to_k_ip.size,
            "conv_spec": [str(axis) for axis in conv.sharding.spec],
        }), flush=True)
""")


@pytest.fixture(scope="module")
def sharded_runs() -> dict[str, dict]:
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=8", JAX_PLATFORMS="cpu")
    proc = subprocess.run([sys.executable, "-c", SCRIPT, json.dumps(MESHES)], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-4000:]
    runs = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
    return {run["mesh"]: run for run in runs}


@pytest.mark.parametrize("mesh", sorted(MESHES))
def test_sharded_apply_matches_single_device(sharded_runs, mesh):
    run = sharded_runs[mesh]
    assert run["devices"] == 8
    assert run["activation_constraints"] > 0  # block-boundary nn.with_logical_constraint reached the program
    assert run["finite"]
    assert run["allclose"], f"{mesh}: sharded vs single-device max |diff| {run['max_abs_diff']}"


@pytest.mark.parametrize("mesh", sorted(MESHES))
def test_params_are_born_sharded(sharded_runs, mesh):
    run = sharded_runs[mesh]
    assert run["replication_error"] is None, run["replication_error"]
    # [context 32, heads*dh 32]: embed -> fsdp on the input side, heads -> tensor on the output side.
    assert run["to_k_ip_spec"] == ["fsdp", "tensor"]
    assert run["to_k_ip_shard_fraction"] == pytest.approx(1 / 8 if mesh == "fsdp8" else 1 / 4)
    assert run["conv_spec"] == ["None", "None", "fsdp", "tensor"]  # HWIO: conv_in -> fsdp, conv_out -> tensor


CHUNKS_SCRIPT = textwrap.dedent("""
    import flax.linen as nn
    import jax, jax.numpy as jnp
    import numpy as np
    from jax.sharding import NamedSharding, PartitionSpec
    from mvrag_jax import sharding

    mesh = sharding.make_mesh(data=2, fsdp=4, tensor=1)
    rows = NamedSharding(mesh, PartitionSpec(("data", "fsdp")))
    x = jax.device_put(np.arange(48 * 5, dtype=np.float32).reshape(48, 5), rows)  # 6 rows per device
    fn = lambda t: {"double": 2 * t, "sum": jnp.sum(t * t, axis=1)}            # independent rows
    with jax.set_mesh(mesh), nn.logical_axis_rules(sharding.DEFAULT_RULES):
        chunked = jax.jit(lambda t: sharding.map_batch_chunks(fn, t, 4))      # pieces of 3 rows per device
        out = chunked(x)
        hlo = chunked.lower(x).compile().as_text()
    expected = fn(np.asarray(x))
    for name in expected:
        np.testing.assert_array_equal(np.asarray(out[name]), expected[name])
        assert out[name].sharding.spec[0] == ("data", "fsdp"), out[name].sharding
    moves = [op for op in ("all-gather", "all-to-all", "collective-permute", "all-reduce") if op in hlo]
    print("OK", "while" in hlo, moves)
""")


def test_map_batch_chunks_runs_each_device_rows_in_pieces_without_moving_data():
    proc = subprocess.run([sys.executable, "-c", CHUNKS_SCRIPT], cwd=REPO, capture_output=True, text=True,
                          timeout=300, env={**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=8",
                                            "JAX_PLATFORMS": "cpu", "PYTHONPATH": str(REPO)})
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.strip().splitlines()[-1] == "OK True []"  # a loop over pieces, and no collective at all


def test_map_batch_chunks_without_a_mesh_picks_the_largest_fitting_divisor():
    import jax
    import jax.numpy as jnp
    import numpy as np
    from mvrag_jax import sharding
    x = jnp.arange(16.0).reshape(8, 2)
    fn = lambda t: t * 3 + 1
    for max_rows in (0, 1, 3, 8, 100):  # 3 -> pieces of 2 rows (2 divides 8); 0, 8 and 100 -> one piece
        np.testing.assert_array_equal(sharding.map_batch_chunks(fn, x, max_rows), fn(x))
    looped = str(jax.make_jaxpr(lambda t: sharding.map_batch_chunks(fn, t, 3))(x))
    assert "scan" in looped and "length=4" in looped
    assert "scan" not in str(jax.make_jaxpr(lambda t: sharding.map_batch_chunks(fn, t, 8))(x))
