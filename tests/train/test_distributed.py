"""mvrag_jax/train/distributed.py + multi-process loop: a missing peer ends with a message; two CPU processes
train together, each on its own data shard, and one process restores their checkpoint, whose weights equal those of
one process stepping the same global batches on the same mesh."""

import json
import subprocess
import time

import grain
import numpy as np
import pytest

from mvrag_jax.cluster import distributed
from mvrag_jax.train import checkpoint, loop
from tests.conftest import free_port
from tests.train.conftest import REPO, run_python, subprocess_env, train_argv

# One process, 2 fake CPU devices (the mesh of two 1-device processes: data=2): the two-process run's steps over the
# global batches it formed, host 0's shard in rows [0, 1), host 1's in [1, 2). Trained weights -> an npz.
ONE_PROCESS = """
import sys
import grain, jax, numpy as np
from configs import train
from data_pipelines import loader
from mvrag_jax.convert.keys import flatten
from mvrag_jax.train import loop
from mvrag_jax.train.data import to_global
from mvrag_jax.train.trainer import make_mesh, make_trainer
workdir, data_dir, out = sys.argv[1:4]
cfg = loop.resolve_config(train.get_config("size=micro"), workdir)
cfg.train.update(batch_size=2, steps=2, log_every=1)
cfg.train.optimizer.update(warmup_steps=2, learning_rate=1e-3)
cfg.data.update(batch_size=2, data_dir=data_dir)
trainer = make_trainer(cfg, make_mesh(cfg))
assert trainer.mesh.shape["data"] == 2, trainer.mesh.shape
shard_cfg = cfg.data.copy_and_resolve_references()
shard_cfg.batch_size = 1
shards = [iter(loader.make_dataset(shard_cfg, shard=grain.sharding.ShardOptions(i, 2, drop_remainder=True)))
          for i in range(2)]
state, rng = trainer.init(jax.random.key(cfg.train.seed)), jax.random.key(cfg.train.seed)
compiled, _ = trainer.compile(trainer.abstract_batch)
for _ in range(cfg.train.steps):
    host = [next(it) for it in shards]
    batch = {name: np.concatenate([h[name] for h in host]) for name in host[0]}
    state, _ = compiled(state, to_global(batch, trainer.batch_sharding), rng)
np.savez(out, **{"/".join(p): np.asarray(v) for p, v in flatten(jax.device_get(state.trainable)).items()})
"""


def test_a_process_whose_peer_never_arrives_exits_within_the_timeout(tmp_path, compile_cache):
    address = f"127.0.0.1:{free_port()}"
    argv = train_argv(tmp_path / "run", tmp_path / "data", compile_cache, f"--coordinator={address}",
                      "--num_processes=2", "--process_id=0", "--init_timeout=3")
    start = time.time()
    proc = subprocess.run(argv, cwd=REPO, env=subprocess_env(), capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert time.time() - start < 60  # 3 s of waiting plus interpreter start-up, not JAX's own abort later
    assert (f"process 0 of 2 waited 3 s at its own coordinator service at {address} but process 1 never connected"
            in proc.stderr)


def test_the_message_of_a_worker_names_the_coordinator():
    message = distributed.missing_processes_message("10.0.0.2:8476", 4, 2, 30)
    assert message.startswith("process 2 of 4 waited 30 s for the coordinator (process 0) at 10.0.0.2:8476 but "
                              "one of processes [0, 1, 3] never connected")
    with pytest.raises(ValueError, match="--process_id 2 is outside 0..1"):
        distributed.initialize("127.0.0.1:1", 2, 2)


@pytest.mark.slow
def test_two_processes_train_on_their_own_shards_and_one_restores(tmp_path, train_data_dir, compile_cache):
    address, workdir = f"127.0.0.1:{free_port()}", tmp_path / "run"
    procs = [subprocess.Popen(train_argv(workdir, train_data_dir, compile_cache, "--config.train.steps=2",
                                         "--config.train.ckpt_every=1", "--config.data.batch_size=1",
                                         "--config.train.optimizer.learning_rate=1e-3",  # steps move the weights
                                         f"--coordinator={address}",
                                         "--num_processes=2", f"--process_id={i}", "--init_timeout=120"),
                              cwd=REPO, env=subprocess_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True) for i in range(2)]
    outputs = [p.communicate(timeout=1500) for p in procs]
    for p, (_, err) in zip(procs, outputs):
        assert p.returncode == 0, err[-4000:]
    summaries = [json.loads(out.strip().splitlines()[-1]) for out, _ in outputs]
    assert [s["processes"] for s in summaries] == [2, 2] and [s["step"] for s in summaries] == [2, 2]

    # Each host read its own shard: its first batch is the first batch of loader shard i of 2.
    from configs import train
    from data_pipelines import loader
    cfg = loop.resolve_config(train.get_config("size=micro"), workdir)
    cfg.data.update(batch_size=1, data_dir=str(train_data_dir))
    expected = [loop.batch_fingerprint(next(iter(loader.make_dataset(
        cfg.data, shard=grain.sharding.ShardOptions(i, 2, drop_remainder=True))))) for i in range(2)]
    assert [s["first_batch"] for s in summaries] == expected and expected[0] != expected[1]

    step_dir = checkpoint.checkpoint_dir(workdir) / "2"
    assert sorted(p.name for p in (step_dir / "data_iter").glob("process_*")) == ["process_0-of-2.json",
                                                                                 "process_1-of-2.json"]
    step, state = checkpoint.restore_state(workdir)  # this (single) process restores what two wrote
    assert step == 2 and int(state["step"]) == 2

    # The same two steps in one process over the same global batches: the same weights (the tolerance of the mesh
    # equivalence tests, tests/train/test_step_sharded.py); and they moved from the init, so the check has teeth.
    out = tmp_path / "one_process.npz"
    proc = run_python(ONE_PROCESS, workdir, train_data_dir, out, timeout=1500,
                      XLA_FLAGS="--xla_force_host_platform_device_count=2")
    assert proc.returncode == 0, proc.stderr[-4000:]
    from mvrag_jax.convert.keys import flatten
    restored = {"/".join(p): np.asarray(v) for p, v in flatten(state["trainable"]).items()}
    with np.load(out) as expected:
        assert sorted(expected.files) == sorted(restored) and expected.files
        for key in expected.files:
            np.testing.assert_allclose(restored[key], expected[key], rtol=1e-5, atol=1e-5, err_msg=key)
        _, step_1 = checkpoint.restore_state(workdir, step=1)
        moved = {"/".join(p): np.abs(np.asarray(v) - expected["/".join(p)]).max()
                 for p, v in flatten(step_1["trainable"]).items()}
        assert max(moved.values()) > 1e-4, moved  # step 2 changed the weights by far more than the tolerance
