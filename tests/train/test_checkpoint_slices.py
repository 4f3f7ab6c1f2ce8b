"""mvrag_jax/train/checkpoint.py across slice counts: a state saved on two (emulated) slices restores on one slice,
on four, and on two split the other way (parameters across slices), every leaf where the new mesh wants it and bit
for bit (8 fake CPU devices)."""

import pytest

from tests.train.conftest import run_python

_ACROSS_SLICES = """
import sys
import jax, numpy as np
from configs import train
from mvrag_jax.train import checkpoint
from mvrag_jax.train.trainer import make_mesh, make_trainer
assert jax.device_count() == 8
def trainer_on(**mesh):
    cfg = train.get_config("size=micro")
    cfg.train.batch_size = cfg.data.batch_size = 8
    cfg.train.update(trainable="ip", ema_decay=0.999)
    cfg.mesh.update(tensor=1, **mesh)
    return cfg, make_trainer(cfg, make_mesh(cfg))
cfg, saver = trainer_on(dcn_data=2, data=1, fsdp=4)  # 2 slices of 4: batch across them, params inside each
state = saver.init(jax.random.key(0))
state = state.replace(ema=jax.tree.map(lambda x: x + 2.0, state.ema))
manager = checkpoint.open_manager(sys.argv[1], save_every=1)
checkpoint.save(manager, 1, state, None, cfg)
manager.wait_until_finished()
for mesh in ({"dcn_data": 1, "data": 1, "fsdp": 8}, {"dcn_data": 4, "data": 1, "fsdp": 2},
             {"dcn_data": 1, "dcn_fsdp": 2, "data": 2, "fsdp": 2}):
    _, loader = trainer_on(**mesh)
    restored, config = checkpoint.restore(checkpoint.open_manager(sys.argv[1]), 1, loader.abstract_state)
    pairs = list(zip(jax.tree.leaves(state), jax.tree.leaves(restored), jax.tree.leaves(loader.state_shardings)))
    for saved, got, target in pairs:
        assert got.sharding == target, (got.sharding, target)
        np.testing.assert_array_equal(np.asarray(got), np.asarray(saved))
    moved = sum(a.sharding != b.sharding for a, b, _ in pairs)
    print("leaves", len(pairs), "moved", moved, "saved_dcn", config["mesh"]["dcn_data"])
"""


@pytest.mark.slow  # three trainers of the micro model in a subprocess: minutes on a shared 2-core host
def test_a_checkpoint_saved_on_two_slices_restores_on_one_and_on_four(tmp_path):
    proc = run_python(_ACROSS_SLICES, tmp_path / "run", timeout=1800,
                      XLA_FLAGS="--xla_force_host_platform_device_count=8")
    assert proc.returncode == 0, proc.stderr[-4000:]
    lines = [line for line in proc.stdout.strip().splitlines() if line.startswith("leaves")]
    assert len(lines) == 3, proc.stdout
    for line in lines:
        _, leaves, _, moved, _, saved_dcn = line.split()
        assert int(leaves) > 100 and int(moved) > 0, line  # the real state, and leaves really changed devices
        assert saved_dcn == "2", line  # the checkpoint's config records the mesh it was saved on
