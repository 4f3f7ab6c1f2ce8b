"""mvrag_jax/train/ema.py in the real train step: the maths against a hand computation over 3 steps, skipped steps,
the off state, config errors, and (8 fake devices) the EMA born and kept on the trainable weights' shardings."""

import json

import jax
import numpy as np
import pytest

from mvrag_jax.train import ema as ema_lib
from mvrag_jax.train.data import to_global
from mvrag_jax.train.trainer import host_batch_example, make_mesh, make_trainer
from tests.train.conftest import run_python
from tests.train.test_step import host_tree, micro_config


def test_decay_warms_up_as_diffusers_ema_model():
    # diffusers EMAModel.get_decay (update_after_step=0, no inv_gamma warm-up): 0 at the first update, then
    # (1 + n) / (10 + n) capped at the decay
    got = [float(ema_lib.decay_at(n, 0.999)) for n in (0, 1, 2, 3, 100, 10_000)]
    assert got == pytest.approx([0.0, 2 / 11, 3 / 12, 4 / 13, 101 / 110, 0.999], rel=1e-6)
    assert float(ema_lib.decay_at(3, 0.2)) == pytest.approx(0.2)


def test_ema_of_three_steps_matches_a_hand_computation_and_skipped_steps_leave_it():
    cfg = micro_config(ema_decay=0.2)  # 0.2 < 3/12: the third update takes the cap, the second the warm-up
    trainer = make_trainer(cfg, make_mesh(cfg, jax.devices()[:1]))
    state = trainer.init(jax.random.key(0))
    assert jax.tree.structure(state.ema) == jax.tree.structure(state.trainable)
    initial, trainable = host_tree(state.ema), host_tree(state.trainable)
    assert initial.keys() == trainable.keys() and all(np.array_equal(v, trainable[k]) for k, v in initial.items())
    batch = to_global(host_batch_example(cfg), trainer.batch_sharding)
    params, emas = [], []
    for _ in range(3):
        state, _ = trainer.step(state, batch, jax.random.key(1))
        params.append(host_tree(state.trainable))
        emas.append(host_tree(state.ema))
    assert set(emas[2]) == set(params[2]) == set(trainer.trainable_paths)
    d1, d2 = 2 / 11, 0.2  # min(0.2, (1 + n) / (10 + n)) at n = 1, 2; n = 0 copies
    for key in params[0]:
        p1, p2, p3 = (p[key].astype(np.float64) for p in params)
        e1 = p1
        e2 = d1 * e1 + (1 - d1) * p2
        e3 = d2 * e2 + (1 - d2) * p3
        for got, want in zip((emas[0][key], emas[1][key], emas[2][key]), (e1, e2, e3)):
            np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-7, err_msg=key)
    moved = max(np.abs(emas[2][k] - params[2][k]).max() for k in params[2])
    assert moved > 1e-5  # the EMA really lags the weights (lr 1e-3 moves them by ~1e-3 a step)

    bad = host_batch_example(cfg)
    bad["camera"][:] = np.nan
    state, metrics = trainer.step(state, to_global(bad, trainer.batch_sharding), jax.random.key(1))
    assert int(metrics["skipped"]) == 1
    for key, value in host_tree(state.ema).items():
        np.testing.assert_array_equal(value, emas[2][key], err_msg=key)


def test_without_ema_the_state_holds_none():
    cfg = micro_config()
    assert cfg.train.ema_decay == 0.0  # the small sizes' default
    trainer = make_trainer(cfg, make_mesh(cfg, jax.devices()[:1]))
    assert trainer.abstract_state.ema == {} and trainer.state_shardings.ema == {}
    assert trainer.init(jax.random.key(0)).ema == {}


@pytest.mark.parametrize("decay", [1.0, -0.5])
def test_a_decay_outside_zero_one_names_the_fix(decay):
    with pytest.raises(ema_lib.EMAConfigError, match=r"train\.ema_decay=.* not in \[0, 1\).*--config\.train\.ema"):
        make_trainer(micro_config(ema_decay=decay), make_mesh(micro_config(), jax.devices()[:1]))


def test_full_size_default_is_an_ema_of_the_trainable_weights():
    from configs import train as train_config
    cfg = train_config.get_config("size=full")
    cfg.train.init = "random"
    assert cfg.train.ema_decay == 0.999
    trainer = make_trainer(cfg, make_mesh(cfg, jax.devices()[:1]))
    same = jax.tree.map(lambda a, b: a.shape == b.shape and a.dtype == b.dtype == np.float32,
                        trainer.abstract_state.ema, trainer.abstract_state.trainable)
    assert jax.tree.leaves(same) and all(jax.tree.leaves(same))


_SHARDED = """
import json, jax, numpy as np
from configs import train
from mvrag_jax import sharding
from mvrag_jax.train.data import to_global
from mvrag_jax.train.trainer import host_batch_example, make_mesh, make_trainer
cfg = train.get_config("size=micro")
cfg.train.update(batch_size=8, trainable="ip", ema_decay=0.999)
cfg.data.batch_size = 8
cfg.mesh.update(data=1, fsdp=8, tensor=1)
trainer = make_trainer(cfg, make_mesh(cfg))
assert trainer.state_shardings.ema == trainer.state_shardings.trainable
abstract = [(e.sharding, t.sharding) for e, t in zip(jax.tree.leaves(trainer.abstract_state.ema),
                                                    jax.tree.leaves(trainer.abstract_state.trainable))]
assert abstract and all(e == t for e, t in abstract)
state = trainer.init(jax.random.key(0))
share = lambda tree: sum(l.addressable_shards[0].data.size for l in jax.tree.leaves(tree)) / sum(
    l.size for l in jax.tree.leaves(tree))
out = {"init_share": [share(state.ema), share(state.trainable)]}
state, _ = trainer.step(state, to_global(host_batch_example(cfg), trainer.batch_sharding), jax.random.key(1))
pairs = list(zip(jax.tree.leaves(state.ema), jax.tree.leaves(state.trainable)))
out["same_shardings"] = all(e.sharding == t.sharding for e, t in pairs)
out["step_share"] = [share(state.ema), share(state.trainable)]
sharding.check_sharded(state.ema, trainer.mesh)  # raises naming the largest replicated tensors
out["devices"] = len(jax.devices())
print(json.dumps(out))
"""


@pytest.mark.slow
def test_ema_is_sharded_like_the_trainable_weights_on_8_devices():
    proc = run_python(_SHARDED, XLA_FLAGS="--xla_force_host_platform_device_count=8")
    assert proc.returncode == 0, proc.stderr[-4000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["devices"] == 8 and out["same_shardings"]
    for ema_share, trainable_share in (out["init_share"], out["step_share"]):
        assert ema_share == trainable_share < 0.25, out  # fsdp=8 splits both the same way
