"""mvrag_jax/train/samples.py through `mvrag train`: sample grids every N steps from the train state, fixed objects
and seeds, and the sampler's time (its compile included) kept out of the step timings."""

import dataclasses
import json
import types

import numpy as np
import pytest
from PIL import Image

from mvrag_jax.train import loop, metrics
from tests.train.conftest import run_python, run_train

SAMPLES = ["--config.train.steps=4", "--config.train.sample_every=2", "--config.train.sample_count=2",
           "--config.train.sample_steps=2", "--config.train.ckpt_every=100"]


def _grids(workdir) -> dict[str, np.ndarray]:
    found = {}
    for png in sorted((workdir / loop.SAMPLES_SUBDIR).glob("*.png")):
        with Image.open(png) as image:
            found[png.stem] = np.asarray(image)
    return found


def _check_grids(workdir, views: int, side: int, retrieved: int) -> dict[str, np.ndarray]:
    grids = _grids(workdir)
    names = sorted({name.rsplit("_", 1)[0] for name in grids})
    assert len(names) == 2 and names[0].startswith("0_") and names[1].startswith("1_"), sorted(grids)
    assert sorted(grids) == sorted(f"{n}_{step:08d}" for n in names for step in (2, 4))  # step N and 2N
    for name, grid in grids.items():
        # One row: the retrieved images, a 4 px gap, then the generated views.
        assert grid.dtype == np.uint8 and grid.shape == (side, (retrieved + views) * side + 4, 3), name
        assert len(np.unique(grid[:, -views * side:].reshape(-1, 3), axis=0)) > 10, f"{name}: views are constant"
    return grids


def test_train_writes_sample_grids_and_keeps_sampling_out_of_step_time(tmp_path, train_data_dir, compile_cache):
    summary = run_train(tmp_path, train_data_dir, compile_cache, *SAMPLES)
    assert summary["step"] == 4
    grids = _check_grids(tmp_path, views=4, side=16, retrieved=2)
    first = [n for n in grids if n.endswith("_00000002")][0]
    # Fixed objects: the retrieved images of a sample are the same at every step (the views follow the weights).
    np.testing.assert_array_equal(grids[first][:, :2 * 16], grids[first.replace("_00000002", "_00000004")][:, :2 * 16])
    assert summary["sample_compile_s"] > 0 and summary["sample_s"] > summary["sample_compile_s"]
    # Step 3's record times the window after step 2's samples: had the sampler (whose first call compiles) been
    # counted, that window would last longer than the compile alone.
    record = {r["step"]: r for r in metrics.read_metrics(tmp_path)}[3]
    assert 1 / record["steps_per_s"] < summary["sample_compile_s"], (record, summary)
    assert b"samples/" in next((tmp_path / metrics.TB_DIR).glob("events.*")).read_bytes()


def test_no_sampler_is_built_when_no_sample_step_falls_in_the_run():
    from configs import train
    t = train.get_config("size=micro").train
    t.update(steps=5, sample_every=2)
    assert loop.samples_due(t, 0) and loop.samples_due(t, 3) and not loop.samples_due(t, 4)
    t.sample_every = 0
    assert not loop.samples_due(t, 0)
    t.update(sample_every=10)
    assert not loop.samples_due(t, 0)


_SHARDED = """
import json, sys
from configs import train
from mvrag_jax.train import loop
cfg = train.get_config("size=micro")
cfg.train.update(batch_size=8, steps=4, log_every=1, sample_every=2, sample_count=2, sample_steps=2, ckpt_every=100)
cfg.data.batch_size = 8
cfg.mesh.update(data=2, fsdp=4, tensor=1)
cfg.data.data_dir = sys.argv[2]
print(json.dumps(loop.run(cfg, sys.argv[1])))
"""


@pytest.mark.slow
def test_samples_of_a_state_sharded_over_8_devices(tmp_path, train_data_dir):
    """data=2 x fsdp=4: the state stays sharded and the two objects are padded to the 8-way object axis (~4 min
    on a loaded 2-core machine)."""
    proc = run_python(_SHARDED, tmp_path, train_data_dir, timeout=900,
                      XLA_FLAGS="--xla_force_host_platform_device_count=8")
    assert proc.returncode == 0, proc.stderr[-4000:]
    summary = json.loads(proc.stdout.strip().splitlines()[-1])
    assert summary["step"] == 4 and summary["sample_compile_s"] > 0
    _check_grids(tmp_path, views=4, side=16, retrieved=2)


@pytest.mark.slow
def test_samples_of_a_checkpoint_run_take_the_prior_pass(tmp_path, train_data_dir, compile_cache, tiny_ckpt):
    """Init from a converted checkpoint (the tiny release): the sampler reads its release files (tokenizer, scheduler,
    processors) and its DINOv2, so the prior pass and the fusion weight run, as `mvrag generate` would (148 s)."""
    summary = run_train(tmp_path, train_data_dir, compile_cache, f"--config.train.init={tiny_ckpt}",
                        "--config.train.trainable=ip", "--config.train.sample_prior_steps=1", *SAMPLES)
    assert summary["step"] == 4 and summary["sample_compile_s"] > 0
    _check_grids(tmp_path, views=4, side=16, retrieved=2)  # the run's data size


def test_sampler_settings_follow_the_init(train_data_dir, tiny_ckpt):
    """Random init: the run's own settings, no DINOv2, so no prior pass, at the fusion weight that keeps training's
    text : retrieval ratio. Checkpoint init: its release files and DINOv2. Both: the same fixed objects (prompts and
    retrieved images). EMA runs sample from the EMA."""
    from configs import train
    from mvrag_jax.train import samples
    from mvrag_jax.train.trainer import make_mesh, make_trainer
    cfg = train.get_config("size=micro")
    cfg.train.batch_size = cfg.data.batch_size = 2
    cfg.data.data_dir = str(train_data_dir)
    random = samples.make_sample_fn(cfg, make_trainer(cfg, make_mesh(cfg)))
    assert random.pipeline.release is None and not random.pipeline.has_dinov2
    assert not random.options.use_prior and random.options.fusion_weight == 0.5 == cfg.train.text_weight
    assert not random.use_ema  # the small sizes train without EMA
    assert random.options.num_inference_steps == cfg.train.sample_steps == 10  # the small sizes' default
    cfg.train.update(init=str(tiny_ckpt), ema_decay=0.999)
    ckpt = samples.make_sample_fn(cfg, make_trainer(cfg, make_mesh(cfg)))
    assert ckpt.pipeline.release.root == tiny_ckpt / "release_files" and ckpt.pipeline.has_dinov2
    assert ckpt.options.use_prior and ckpt.options.fusion_weight is None and ckpt.use_ema
    assert [o.name for o in ckpt.objects] == [o.name for o in random.objects] and len(random.objects) == 2
    for a, b in zip(random.objects, ckpt.objects):
        assert a.request.seed == b.request.seed and len(a.request.retrieved) == cfg.data.num_retrieved
        for x, y in zip(a.request.retrieved, b.request.retrieved):
            np.testing.assert_array_equal(x, y)


@pytest.mark.parametrize("text_weight, scale", [(0.5, 0.5), (0.25, 0.3), (1.0, 0.75)])
def test_sample_fusion_weight_keeps_the_training_ratio(text_weight, scale):
    from mvrag_jax.train.samples import sample_fusion_weight
    s = sample_fusion_weight(text_weight)
    assert s == pytest.approx(scale, abs=1e-12)
    assert s / (1.5 - s) == pytest.approx(text_weight / 1.0, abs=1e-12)  # inference (s, 1.5 - s) ~ training (l, 1)


@dataclasses.dataclass(frozen=True)
class _RecordingPipeline:
    """Stands in for the Pipeline: records the params each generate call sees (no compile)."""
    params: dict
    seen: list

    def generate(self, requests, options):
        self.seen.append(self.params)
        return [types.SimpleNamespace(images=np.zeros((1, 2, 2, 3), np.uint8)) for _ in requests], {"compile": 0.0}

    @property
    def programs(self):
        return types.SimpleNamespace(compile_seconds=0.0)


@pytest.mark.parametrize("use_ema", [False, True])
def test_the_sampler_generates_from_the_ema_when_asked(use_ema):
    from mvrag_jax.pipeline import ObjectRequest
    from mvrag_jax.train import samples
    from mvrag_jax.train.state import TrainState
    zero = np.zeros((), np.int32)
    state = TrainState(step=zero, trainable={"resampler": {"w": np.full(2, 1.0)}}, frozen={"vae": {"b": np.ones(1)}},
                       opt_state=(), skipped_steps=zero, ema={"resampler": {"w": np.full(2, 7.0)}})
    seen = []
    request = ObjectRequest("a cube", (np.zeros((2, 2, 3), np.uint8),), seed=0)
    sampler = samples.Sampler(_RecordingPipeline({"dinov2": {}}, seen), [samples.SampleObject("0_a-cube", request)],
                              options=None, matmul_precision="default", use_ema=use_ema)
    grids = sampler(state, 1)
    assert list(grids) == ["0_a-cube"] and len(seen) == 1
    assert set(seen[0]) == {"dinov2", "resampler", "vae"}
    np.testing.assert_array_equal(seen[0]["resampler"]["w"], np.full(2, 7.0 if use_ema else 1.0))
    no_ema = state.replace(ema={})
    if use_ema:
        with pytest.raises(ValueError, match="holds no EMA"):
            sampler(no_ema, 1)


def test_a_sample_count_below_one_names_the_fields(train_data_dir):
    from configs import train
    from mvrag_jax.train import samples
    from mvrag_jax.train.trainer import make_mesh, make_trainer
    cfg = train.get_config("size=micro")
    cfg.train.batch_size = cfg.data.batch_size = 2
    cfg.train.sample_count = 0
    with pytest.raises(samples.SampleConfigError, match=r"sample_count=0; set --config.train.sample_count to at least "
                                                        r"1 \(or --config.train.sample_every=0"):
        samples.make_sample_fn(cfg, make_trainer(cfg, make_mesh(cfg)))
