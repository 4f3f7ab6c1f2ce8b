"""The train step gives the same result on every mesh: 8 fake CPU devices, meshes 8x1x1, 2x4x1, 1x8x1, 2x2x2, and
2x2x2 with train.microbatches=2 (gradient accumulation over pieces of each device's objects).

Fake devices must be configured before jax initialises, so the runs happen in one subprocess with XLA_FLAGS set
(as tests/test_sharding.py does); it saves each mesh's losses and trained params, which the tests compare.
"""

import json
import os
import pathlib
import subprocess
import sys
import textwrap

import numpy as np
import pytest

# Four meshes x one compile of the step on 8 fake devices: minutes on a 2-core machine, so not in `make test`.
pytestmark = pytest.mark.slow

REPO = pathlib.Path(__file__).parents[2]
MESHES = {"8x1x1": (8, 1, 1, 1), "2x4x1": (2, 4, 1, 1), "1x8x1": (1, 8, 1, 1), "2x2x2": (2, 2, 2, 1),
          "2x2x2_mb2": (2, 2, 2, 2)}  # (data, fsdp, tensor, microbatches)
STEPS = 3

SCRIPT = textwrap.dedent("""
    import json, sys
    import jax
    import numpy as np
    from configs import train as train_config
    from mvrag_jax.convert.keys import flatten
    from mvrag_jax.train.data import to_global
    from mvrag_jax.train.trainer import host_batch_example, make_mesh, make_trainer

    meshes, steps, out = json.loads(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
    for name, (data, fsdp, tensor, microbatches) in meshes.items():
        cfg = train_config.get_config("size=micro")
        # CFG dropout stays on: its draws must not depend on the mesh (nor on the microbatches)
        cfg.train.update(batch_size=8, trainable="ip", microbatches=microbatches)
        cfg.data.batch_size = 8
        cfg.train.optimizer.update(learning_rate=1e-3, warmup_steps=0)
        cfg.mesh.update(data=data, fsdp=fsdp, tensor=tensor)
        trainer = make_trainer(cfg, make_mesh(cfg))
        state = trainer.init(jax.random.key(0))
        compiled, _ = trainer.compile()
        batch = to_global(host_batch_example(cfg), trainer.batch_sharding)
        losses = []
        for _ in range(steps):
            state, metrics = compiled(state, batch, jax.random.key(1))
            losses.append(float(metrics["loss"]))
        leaves = jax.tree.leaves(state.frozen["unet"])  # per-device share of the frozen UNet's elements
        shard_fraction = sum(leaf.addressable_shards[0].data.size for leaf in leaves) / sum(l.size for l in leaves)
        np.savez(f"{out}/{name}.npz", **{"/".join(p): np.asarray(v)
                                          for p, v in flatten(jax.device_get(state.trainable)).items()})
        print(json.dumps({"mesh": name, "devices": len(jax.devices()), "losses": losses,
                          "frozen_unet_fraction_per_device": shard_fraction}), flush=True)
""")


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> tuple[dict, pathlib.Path]:
    out = tmp_path_factory.mktemp("meshes")
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=8", JAX_PLATFORMS="cpu")
    proc = subprocess.run([sys.executable, "-c", SCRIPT, json.dumps(MESHES), str(STEPS), str(out)], cwd=REPO,
                          env=env, capture_output=True, text=True, timeout=1500)
    assert proc.returncode == 0, proc.stderr[-4000:]
    results = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
    return {r["mesh"]: r for r in results}, out


@pytest.mark.parametrize("mesh", sorted(set(MESHES) - {"8x1x1"}))
def test_same_losses_and_params_on_every_mesh(runs, mesh):
    results, out = runs
    reference, other = results["8x1x1"], results[mesh]
    assert reference["devices"] == other["devices"] == 8
    np.testing.assert_allclose(other["losses"], reference["losses"], rtol=1e-5, atol=1e-5)
    with np.load(out / "8x1x1.npz") as ref, np.load(out / f"{mesh}.npz") as got:
        assert sorted(ref.files) == sorted(got.files) and ref.files
        for key in ref.files:
            np.testing.assert_allclose(got[key], ref[key], rtol=1e-5, atol=1e-5, err_msg=f"{mesh}: {key}")


def test_frozen_params_are_sharded_where_the_mesh_has_model_axes(runs):
    results, _ = runs
    share = {mesh: r["frozen_unet_fraction_per_device"] for mesh, r in results.items()}
    assert share["8x1x1"] == 1.0  # pure data parallel: replicated weights
    # fsdp/tensor split the weights (the micro model's small dims, e.g. 4 latent channels, stay replicated).
    assert share["1x8x1"] < 0.2 and share["2x4x1"] < 0.3 and share["2x2x2"] < 0.3, share
    assert share["2x2x2_mb2"] == share["2x2x2"]  # accumulation leaves the state's layout alone
