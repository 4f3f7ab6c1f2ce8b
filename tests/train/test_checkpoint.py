"""mvrag_jax/train/checkpoint.py: a save killed with -9 is ignored, restores land on another mesh, exports merge."""

import functools
import json
import os
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest

from mvrag_jax.train import checkpoint
from tests.train.conftest import REPO, run_python, subprocess_env

# Child of the kill test: the real tiny trainer's state saved complete at step 1; then step 2's async save is held
# just before its atomic rename (the moment a preemption hurts most) and the parent kills the process with -9.
_KILLED_MID_SAVE = """
import json, pathlib, sys, time
import jax, numpy as np
from orbax.checkpoint._src.path import atomicity
from configs import train
from mvrag_jax.train import checkpoint
from mvrag_jax.train.trainer import make_mesh, make_trainer
workdir = pathlib.Path(sys.argv[1])
cfg = train.get_config("size=micro")
cfg.train.batch_size = cfg.data.batch_size = 2
trainer = make_trainer(cfg, make_mesh(cfg))
state = trainer.init(jax.random.key(0))
manager = checkpoint.open_manager(workdir, save_every=1)
checkpoint.save(manager, 1, state, None, cfg)
manager.wait_until_finished()
async def held_finalize(self):
    (workdir / "saving").write_text("2")
    time.sleep(3600)
atomicity.AtomicRenameTemporaryPath.finalize = held_finalize
checkpoint.save(manager, 2, state.replace(step=state.step + 1), None, cfg)
(workdir / "checksum").write_text(json.dumps(float(np.asarray(jax.tree.leaves(state.trainable)[0]).sum())))
time.sleep(3600)
"""


def test_a_save_killed_with_minus_9_leaves_the_previous_checkpoint_restorable(tmp_path):
    workdir = tmp_path / "run"
    workdir.mkdir()
    proc = subprocess.Popen([sys.executable, "-c", _KILLED_MID_SAVE, str(workdir)], cwd=REPO, env=subprocess_env(),
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.time() + 600
        while not ((workdir / "saving").exists() and (workdir / "checksum").exists()):
            assert proc.poll() is None, proc.stderr.read()[-3000:]
            assert time.time() < deadline, "the child never reached its second save"
            time.sleep(0.2)
        proc.send_signal(signal.SIGKILL)
        proc.wait(30)
    finally:
        if proc.poll() is None:
            proc.kill()
    ckpt_dir = checkpoint.checkpoint_dir(workdir)
    partial = [p.name for p in ckpt_dir.iterdir() if p.name.startswith("2")]
    assert partial and all(".orbax-checkpoint-tmp" in name for name in partial), partial  # killed mid-save

    step, state = checkpoint.restore_state(workdir)  # read-only: the partial save is not a step
    assert step == 1 and int(state["step"]) == 0
    expected = json.loads((workdir / "checksum").read_text())
    assert float(np.asarray(jax.tree.leaves(state["trainable"])[0]).sum()) == expected

    from configs import train
    manager = checkpoint.open_manager(workdir, save_every=1)  # a resuming run: sees step 1 and saves step 2 again
    assert checkpoint.latest_step(manager) == 1
    assert checkpoint.save(manager, 2, state, None, train.get_config("size=micro"))
    manager.wait_until_finished()
    manager.close()
    assert checkpoint.open_manager(workdir, read_only=True).all_steps() == [1, 2]
    assert not [p for p in ckpt_dir.iterdir() if ".orbax-checkpoint-tmp" in p.name]


_ANOTHER_MESH = """
import sys
import jax, numpy as np
from configs import train
from mvrag_jax.train import checkpoint
from mvrag_jax.train.trainer import make_mesh, make_trainer
assert jax.device_count() == 8
def trainer_on(data, fsdp):
    cfg = train.get_config("size=micro")
    cfg.train.batch_size = cfg.data.batch_size = 8
    cfg.train.update(trainable="ip", ema_decay=0.999)  # the EMA travels with the weights it follows
    cfg.mesh.update(data=data, fsdp=fsdp, tensor=1)
    return cfg, make_trainer(cfg, make_mesh(cfg))
cfg, saver = trainer_on(1, 8)
state = saver.init(jax.random.key(0))
state = state.replace(ema=jax.tree.map(lambda x: x + 2.0, state.ema))  # EMA values of its own
manager = checkpoint.open_manager(sys.argv[1], save_every=1)
checkpoint.save(manager, 1, state, None, cfg)
manager.wait_until_finished()
_, loader = trainer_on(2, 4)
restored, config = checkpoint.restore(checkpoint.open_manager(sys.argv[1]), 1, loader.abstract_state)
pairs = list(zip(jax.tree.leaves(state), jax.tree.leaves(restored), jax.tree.leaves(loader.state_shardings)))
for saved, got, target in pairs:
    assert got.sharding == target, (got.sharding, target)
    np.testing.assert_array_equal(np.asarray(got), np.asarray(saved))
moved = sum(a.sharding.spec != b.sharding.spec for a, b, _ in pairs)
for got, target in zip(jax.tree.leaves(restored.ema), jax.tree.leaves(loader.state_shardings.trainable)):
    assert got.sharding == target  # the EMA lands where the trainable weights do
ema = len(jax.tree.leaves(restored.ema))
assert ema == len(jax.tree.leaves(restored.trainable))
print("leaves", len(pairs), "resharded", moved, "ema", ema, "config", config["mesh"])
"""


def test_a_checkpoint_saved_on_fsdp8_restores_on_data2_fsdp4(tmp_path):
    proc = run_python(_ANOTHER_MESH, tmp_path / "run", XLA_FLAGS="--xla_force_host_platform_device_count=8")
    assert proc.returncode == 0, proc.stderr[-4000:]
    line = proc.stdout.strip().splitlines()[-1]
    _, leaves, _, moved, _, ema, _, mesh = line.split(" ", 7)
    assert int(leaves) > 100 and int(moved) > 0, line  # the real state, and some leaves really changed layout
    assert int(ema) > 10, line  # the EMA of every trainable param came back, bit for bit, on the new mesh
    assert "'fsdp': 8" in mesh


@pytest.mark.parametrize("frozen_dtype", ["float32", "bfloat16"])
def test_export_of_a_training_workdir_merges_trained_params_into_the_init_checkpoint(tmp_path, tiny_ckpt,
                                                                                    frozen_dtype):
    from configs import train
    from mvrag_jax.convert import convert_release, load_model_checkpoint
    from mvrag_jax.convert.keys import flatten
    from mvrag_jax.train.trainer import make_mesh, make_trainer
    cfg = train.get_config("size=tiny")
    cfg.train.update(batch_size=2, init=str(tiny_ckpt), trainable="ip", frozen_dtype=frozen_dtype)
    cfg.data.batch_size = 2
    trainer = make_trainer(cfg, make_mesh(cfg))
    state = trainer.init(jax.random.key(0))
    assert {leaf.dtype.name for leaf in jax.tree.leaves(state.frozen)} == {frozen_dtype}
    assert {leaf.dtype.name for leaf in jax.tree.leaves(state.trainable)} == {"float32"}  # master weights
    state = state.replace(trainable=jax.tree.map(lambda x: x + 1.0, state.trainable))  # "trained"
    manager = checkpoint.open_manager(tmp_path / "run", save_every=1)
    checkpoint.save(manager, 5, state, None, cfg)
    manager.wait_until_finished()

    out = checkpoint.export(tmp_path / "run", tmp_path / "release")
    _, exported = load_model_checkpoint(convert_release(out, tmp_path / "reconverted", show_progress=False))
    _, initial = load_model_checkpoint(tiny_ckpt)
    # trained leaves from the run, frozen ones from the init checkpoint (bit-exact even when the run held them in bf16)
    trained = {name: flatten(tree) for name, tree in jax.device_get(state.trainable).items()}
    for name in ("unet", "resampler", "clip_text", "vae"):
        got, want_frozen = flatten(exported[name]), flatten(initial[name])
        assert set(got) == set(want_frozen)
        for path, value in got.items():
            np.testing.assert_array_equal(value, trained.get(name, {}).get(path, want_frozen[path]), err_msg=path)
    jax.tree.map(np.testing.assert_array_equal, exported["dinov2"], initial["dinov2"])  # not trained: unchanged
    ip = exported["unet"]["input_blocks_1_1"]["transformer_blocks_0"]["attn2"]["to_k_ip"]["kernel"]
    np.testing.assert_array_equal(ip, initial["unet"]["input_blocks_1_1"]["transformer_blocks_0"]["attn2"]
                                  ["to_k_ip"]["kernel"] + 1.0)

    (tmp_path / "empty_run" / "checkpoints").mkdir(parents=True)
    with pytest.raises(checkpoint.NoCheckpointError, match="no complete training checkpoint"):
        checkpoint.export(tmp_path / "empty_run", tmp_path / "release2")


def _saved_run(workdir, tiny_ckpt, ema_decay: float):
    """A tiny run from the converted tiny release, saved at step 5 with trainable = init + 1 and EMA = init + 2."""
    from configs import train
    from mvrag_jax.train.trainer import make_mesh, make_trainer
    cfg = train.get_config("size=tiny")
    cfg.train.update(batch_size=2, init=str(tiny_ckpt), trainable="ip", ema_decay=ema_decay)
    cfg.data.batch_size = 2
    trainer = make_trainer(cfg, make_mesh(cfg))
    state = trainer.init(jax.random.key(0))
    state = state.replace(trainable=jax.tree.map(lambda x: x + 1.0, state.trainable),
                          ema=jax.tree.map(lambda x: x + 2.0, state.ema))
    manager = checkpoint.open_manager(workdir, save_every=1)
    checkpoint.save(manager, 5, state, None, cfg)
    manager.wait_until_finished()
    return trainer, state, manager


def test_ema_round_trips_and_export_ema_writes_it(tmp_path, tiny_ckpt, capsys):
    from mvrag_jax.cli.main import main
    from mvrag_jax.convert import convert_release, load_model_checkpoint
    trainer, state, manager = _saved_run(tmp_path / "run", tiny_ckpt, 0.999)
    restored, _ = checkpoint.restore(manager, 5, trainer.abstract_state)
    pairs = list(zip(jax.tree.leaves(restored.ema), jax.tree.leaves(state.ema)))
    assert len(pairs) == len(trainer.trainable_paths)
    for got, saved in pairs:
        assert got.sharding == saved.sharding
        np.testing.assert_array_equal(np.asarray(got), np.asarray(saved))

    _, initial = load_model_checkpoint(tiny_ckpt)
    ip_path = ("input_blocks_1_1", "transformer_blocks_0", "attn2", "to_k_ip", "kernel")
    pick = lambda tree: functools.reduce(lambda t, k: t[k], ip_path, tree)
    for flags, offset in (([], 1.0), (["--ema"], 2.0)):
        out = tmp_path / f"release{offset:.0f}"
        assert main(["mvrag", "export", "--ckpt", str(tmp_path / "run"), "--out", str(out), *flags,
                     "--compile_cache_dir", "none"]) == 0
        _, exported = load_model_checkpoint(convert_release(out, tmp_path / f"reconverted{offset:.0f}",
                                                            show_progress=False))
        np.testing.assert_array_equal(pick(exported["unet"]), pick(initial["unet"]) + offset)  # EMA or trained
        frozen = exported["unet"]["input_blocks_1_1"]["transformer_blocks_0"]["attn2"]["to_k"]["kernel"]
        np.testing.assert_array_equal(frozen, initial["unet"]["input_blocks_1_1"]["transformer_blocks_0"]["attn2"]
                                      ["to_k"]["kernel"])  # frozen weights from the init checkpoint either way
        latents = jax.tree.leaves(exported["resampler"])[0]
        np.testing.assert_array_equal(latents, np.asarray(jax.tree.leaves(
            state.ema["resampler"] if offset == 2.0 else state.trainable["resampler"])[0]))


def test_export_ema_of_a_run_without_ema_is_a_one_line_error(tmp_path, tiny_ckpt, capsys):
    from mvrag_jax.cli.main import main
    _saved_run(tmp_path / "run", tiny_ckpt, 0.0)
    capsys.readouterr()
    assert main(["mvrag", "export", "--ckpt", str(tmp_path / "run"), "--out", str(tmp_path / "o"), "--ema",
                 "--compile_cache_dir", "none"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "holds no EMA weights" in err and "train.ema_decay=0" in err, err
    assert not (tmp_path / "o").exists()
    with pytest.raises(checkpoint.NoEMAError, match="not a training workdir"):
        checkpoint.export(tiny_ckpt, tmp_path / "o2", ema=True)


def _micro_trainer(ema_decay: float):
    from configs import train
    from mvrag_jax.train.trainer import make_mesh, make_trainer
    cfg = train.get_config("size=micro")
    cfg.train.update(batch_size=2, trainable="ip", ema_decay=ema_decay)
    cfg.data.batch_size = 2
    return cfg, make_trainer(cfg, make_mesh(cfg, jax.devices()[:1]))


def test_a_checkpoint_from_before_the_ema_resumes_and_a_changed_ema_setting_names_the_fix(tmp_path):
    import dataclasses
    cfg, plain = _micro_trainer(0.0)
    state = plain.init(jax.random.key(0))
    old_layout = {f.name: getattr(state, f.name) for f in dataclasses.fields(state) if f.name != "ema"}
    manager = checkpoint.open_manager(tmp_path / "old", save_every=1)
    checkpoint.save(manager, 3, old_layout, None, cfg)  # what TrainState saved before it had an `ema` field
    manager.wait_until_finished()
    restored, _ = checkpoint.restore(manager, 3, plain.abstract_state)
    assert restored.ema == {} and int(restored.step) == 0
    jax.tree.map(np.testing.assert_array_equal, restored.trainable, state.trainable)

    _, with_ema = _micro_trainer(0.999)
    with pytest.raises(checkpoint.EMAMismatchError, match=r"saved without an EMA.*train\.ema_decay is set.*"
                                                          r"--config\.train\.ema_decay"):
        checkpoint.restore(manager, 3, with_ema.abstract_state)
    manager = checkpoint.open_manager(tmp_path / "ema", save_every=1)
    checkpoint.save(manager, 3, with_ema.init(jax.random.key(0)), None, cfg)
    manager.wait_until_finished()
    with pytest.raises(checkpoint.EMAMismatchError, match=r"saved with an EMA.*train\.ema_decay is 0"):
        checkpoint.restore(manager, 3, plain.abstract_state)
    restored, _ = checkpoint.restore(manager, 3, with_ema.abstract_state)
    assert len(jax.tree.leaves(restored.ema)) == len(jax.tree.leaves(restored.trainable)) > 0


def test_keep_checkpoints_keeps_the_newest_and_deletes_the_rest(tmp_path):
    from configs import train
    cfg = train.get_config("size=micro")
    manager = checkpoint.open_manager(tmp_path, save_every=2, keep=2)
    for step in range(1, 8):
        checkpoint.save(manager, step, {"w": np.full((3,), float(step), np.float32)}, None, cfg,
                        force=step == 7)  # the last step is saved off the interval, as the loop does
    manager.wait_until_finished()
    manager.close()
    on_disk = sorted(int(p.name) for p in checkpoint.checkpoint_dir(tmp_path).iterdir() if p.name.isdigit())
    assert on_disk == [6, 7]  # 2, 4 were saved and then deleted; 1, 3, 5 were skipped by the interval
    manager = checkpoint.open_manager(tmp_path, read_only=True)
    assert manager.all_steps() == [6, 7]
    step, state = checkpoint.restore_state(tmp_path, step=6)
    assert step == 6 and np.asarray(state["w"]).tolist() == [6.0] * 3
    with pytest.raises(ValueError, match="keep=0; set --config.train.keep_checkpoints to at least 1"):
        checkpoint.open_manager(tmp_path / "other", keep=0)
