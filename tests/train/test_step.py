"""mvrag_jax/train/{state,step,trainer}.py on one device: init sources, what trains, overfitting, skipped steps.

All tests share one compiled step of configs/train.py:size=micro (trainable="ip", 2 objects: one 3D, one 2D).
"""

import flax.linen as nn
import jax
import numpy as np
import pytest

from configs import train as train_config
from mvrag_jax.convert.keys import flatten
from mvrag_jax.train import state as state_lib
from mvrag_jax.train.data import to_global
from mvrag_jax.train.trainable import TrainableSetError, trainable_paths
from mvrag_jax.train.trainer import TrainConfigError, host_batch_example, make_mesh, make_trainer


def micro_config(**train):
    cfg = train_config.get_config("size=micro")
    cfg.train.update({"batch_size": 2, "trainable": "ip", "cfg_drop_text": 0.0, "cfg_drop_image": 0.0,
                      "cfg_drop_both": 0.0, **train})
    cfg.data.batch_size = cfg.train.batch_size
    cfg.train.optimizer.update(learning_rate=1e-3, warmup_steps=0)
    cfg.mesh.update(data=1, fsdp=1, tensor=1)
    return cfg


def host_tree(tree) -> dict:
    return {"/".join(path): np.array(value) for path, value in flatten(jax.device_get(tree)).items()}


def run_steps(trainer, compiled, cfg, steps: int) -> tuple[list[dict], dict]:
    """(metrics of each step, trained params) of `steps` compiled steps from init key 0 on the example batch."""
    state = trainer.init(jax.random.key(0))
    batch = to_global(host_batch_example(cfg), trainer.batch_sharding)
    metrics = []
    for _ in range(steps):
        state, m = compiled(state, batch, jax.random.key(1))
        metrics.append(jax.device_get(m))
    return metrics, host_tree(state.trainable)


@pytest.fixture(scope="module")
def run():
    """Init, then: one replayable step at step 0, five steps, the replay again, and a non-finite step."""
    cfg = micro_config()
    trainer = make_trainer(cfg, make_mesh(cfg, jax.devices()[:1]))
    state = trainer.init(jax.random.key(0))
    compiled, compile_s = trainer.compile()
    batch = to_global(host_batch_example(cfg), trainer.batch_sharding)
    rng = jax.random.key(1)
    out = {"trainer": trainer, "compile_s": compile_s, "frozen_before": host_tree(state.frozen),
           "trainable_before": host_tree(state.trainable)}
    losses = []
    for _ in range(6):
        state, metrics = compiled(state, batch, rng)
        losses.append(jax.device_get(metrics))
    out["metrics"] = losses
    out["frozen_after"] = host_tree(state.frozen)
    # Replay step 0 (same noise, timesteps and dropout: the step key is fold_in(rng, step)) with trained params.
    replay_state, replay = compiled(state.replace(step=state.step * 0), batch, rng)
    out["replay"] = jax.device_get(replay)
    state = replay_state.replace(step=replay_state.step * 0 + 7)
    bad = host_batch_example(cfg)
    bad["camera"][:] = np.nan
    before = host_tree(state.trainable)
    state, bad_metrics = compiled(state, to_global(bad, trainer.batch_sharding), rng)
    out.update(bad_metrics=jax.device_get(bad_metrics), bad_before=before, bad_after=host_tree(state.trainable),
               bad_step=int(state.step), bad_skipped=int(state.skipped_steps))
    return out


def test_exact_trainable_paths_for_ip_and_unet():
    cfg = micro_config()
    shapes, _ = state_lib.abstract_params(state_lib.model_configs(cfg), make_mesh(cfg, jax.devices()[:1]))
    attn2 = ["input_blocks_1_1", "middle_block_1", "output_blocks_0_1", "output_blocks_1_1"]
    ip = {f"unet/{block}/transformer_blocks_0/attn2/{name}/kernel" for block in attn2 for name in ("to_k_ip", "to_v_ip")}
    resampler = {"resampler/" + "/".join(p) for p in flatten(shapes["resampler"])}
    assert set(trainable_paths(shapes, "ip")) == ip | resampler
    unet = {"unet/" + "/".join(p) for p in flatten(shapes["unet"])}
    assert set(trainable_paths(shapes, "unet")) == unet | resampler
    assert ip < unet and not any(p.startswith(("vae", "clip")) for p in trainable_paths(shapes, "unet"))
    with pytest.raises(TrainableSetError, match="trainable='all'"):
        trainable_paths(shapes, "all")


def test_base_init_copies_text_projections_and_places_every_param():
    cfg = micro_config(init="base")
    trainer = make_trainer(cfg, make_mesh(cfg, jax.devices()[:1]))
    state = trainer.init(jax.random.key(0))
    params = host_tree(state.params())
    attn2 = [p[:-len("to_k_ip/kernel")] for p in params if p.endswith("attn2/to_k_ip/kernel")]
    assert len(attn2) == 4
    for prefix in attn2:
        np.testing.assert_array_equal(params[prefix + "to_k_ip/kernel"], params[prefix + "to_k/kernel"])
        np.testing.assert_array_equal(params[prefix + "to_v_ip/kernel"], params[prefix + "to_v/kernel"])
    assert np.std(params["resampler/latents"]) > 0  # the resampler got a real (jitted) init
    # Every leaf has the abstract state's shape, dtype and sharding.
    for leaf, abstract in zip(jax.tree.leaves(state), jax.tree.leaves(trainer.abstract_state)):
        assert (leaf.shape, leaf.dtype) == (abstract.shape, abstract.dtype)
        assert leaf.sharding == abstract.sharding
    assert state.step.dtype == np.int32 and state.step.shape == ()


def test_checkpoint_init_loads_converted_release(tiny_ckpt):
    from mvrag_jax.convert import load_model_checkpoint
    cfg = micro_config(init=str(tiny_ckpt))
    trainer = make_trainer(cfg, make_mesh(cfg, jax.devices()[:1]))
    assert trainer.models.unet.model_channels == 32 and len(trainer.models.unet.channel_mult) == 3  # release sizes
    state = trainer.init(jax.random.key(0))
    _, released = load_model_checkpoint(tiny_ckpt)
    params = host_tree(state.params())
    expected = {f"{name}/{'/'.join(p)}": v for name in state_lib.COMPONENTS for p, v in flatten(released[name]).items()}
    assert params.keys() == expected.keys()
    for key, value in expected.items():
        np.testing.assert_array_equal(params[key], value, err_msg=key)


def test_inconsistent_config_is_an_error():
    cfg = micro_config()
    cfg.train.batch_size = 4  # but the loader's per-host batch is still 2
    with pytest.raises(TrainConfigError, match="--config.data.batch_size=4"):
        make_trainer(cfg, make_mesh(cfg, jax.devices()[:1]))
    cfg = micro_config(init="")
    with pytest.raises(state_lib.InitError, match="--config.train.init"):
        make_trainer(cfg, make_mesh(cfg, jax.devices()[:1]))


def test_steps_overfit_a_fixed_batch(run):
    first = run["metrics"][0]
    assert np.isfinite(first["loss"]) and first["views_3d"] == 4 and first["views_2d"] == 1
    # The same noise and timesteps as step 0, after 6 steps on this batch: lower loss.
    assert run["replay"]["loss"] < 0.95 * first["loss"], (first["loss"], run["replay"]["loss"])
    assert first["learning_rate"] == pytest.approx(1e-3) and first["grad_norm"] > 0
    assert run["compile_s"] > 0


def test_frozen_params_unchanged_bit_for_bit_and_trainable_moved(run):
    assert run["frozen_before"].keys() == run["frozen_after"].keys()
    for key, value in run["frozen_before"].items():
        np.testing.assert_array_equal(run["frozen_after"][key], value, err_msg=key)
    assert set(run["trainable_before"]) == set(run["trainer"].trainable_paths)
    assert not any(np.array_equal(run["trainable_before"][k], v) for k, v in run["bad_before"].items())


def test_non_finite_batch_is_skipped_and_counted(run):
    metrics = run["bad_metrics"]
    assert not np.isfinite(metrics["loss"]) and metrics["skipped"] == 1 and metrics["skipped_steps"] == 1
    assert run["bad_skipped"] == 1 and run["bad_step"] == 8  # the step counter still advances
    for key, value in run["bad_before"].items():
        np.testing.assert_array_equal(run["bad_after"][key], value, err_msg=key)
    assert all(m["skipped"] == 0 for m in run["metrics"])


def test_retrieved_pixels_match_the_clip_processor_and_resize_in_graph():
    from mvrag_jax.inputs.images import CLIPImageProcessorConfig, clip_preprocess
    from mvrag_jax.train.step import retrieved_pixel_values
    images = np.random.default_rng(0).integers(0, 256, (3, 32, 32, 3), dtype=np.uint8)
    processor = CLIPImageProcessorConfig(shortest_edge=32, crop_hw=(32, 32))
    expected = clip_preprocess(list(images), processor)  # sizes already right: only rescale + normalise apply
    got = np.asarray(retrieved_pixel_values(images, 32, processor.image_mean, processor.image_std))
    np.testing.assert_allclose(got, expected, rtol=1e-6, atol=1e-6)
    resized = np.asarray(retrieved_pixel_values(images, 16, processor.image_mean, processor.image_std))
    assert resized.shape == (3, 16, 16, 3) and np.isfinite(resized).all()


def test_cfg_dropout_events_are_exclusive_at_the_configured_rates():
    from mvrag_jax.train.step import StepOptions, cfg_drops
    options = StepOptions(empty_input_ids=(0,), alphas_cumprod=(0.5,), clip_mean=(0, 0, 0), clip_std=(1, 1, 1),
                          cfg_drop_text=0.1, cfg_drop_image=0.2, cfg_drop_both=0.3)
    text, image = map(np.asarray, cfg_drops(jax.random.key(0), 200_000, options))
    assert np.mean(text & ~image) == pytest.approx(0.1, abs=0.005)
    assert np.mean(image & ~text) == pytest.approx(0.2, abs=0.005)
    assert np.mean(text & image) == pytest.approx(0.3, abs=0.005)


def test_full_size_trainer_is_consistent_without_allocating():
    cfg = train_config.get_config("size=full")
    cfg.train.init = "random"
    trainer = make_trainer(cfg, make_mesh(cfg, jax.devices()[:1]))
    size = lambda tree: sum(int(np.prod(leaf.shape)) for leaf in jax.tree.leaves(tree))
    assert size(trainer.abstract_state.trainable["resampler"]) == 48_541_696
    assert size(trainer.abstract_state.trainable) + size(trainer.abstract_state.frozen["unet"]) == \
        48_541_696 + 893_131_204
    moments = [leaf for leaf in jax.tree.leaves(trainer.abstract_state.opt_state) if leaf.ndim > 0]
    assert sum(int(np.prod(m.shape)) for m in moments) == 2 * size(trainer.abstract_state.trainable)  # AdamW mu, nu
    assert trainer.abstract_batch["images"].shape == (64, 4, 256, 256, 3)
    assert trainer.abstract_batch["retrieved"].shape == (64, 4, 224, 224, 3)
    assert trainer.models.unet.dtype == "bfloat16" and trainer.models.unet.remat == "ordered"
    assert trainer.jitted_encode is not None  # the encoders run as their own program
    assert {leaf.dtype.name for leaf in jax.tree.leaves(trainer.abstract_state.frozen)} == {"bfloat16"}
    assert {leaf.dtype.name for leaf in jax.tree.leaves(trainer.abstract_state.trainable)} == {"float32"}


def test_separate_encoders_give_the_in_step_losses_and_params():
    """train.encoders="separate": the encode program then the update program, the same maths and keys as one
    program; there also the encoders run one row at a time (encode_chunk_rows=1: a lax.map over pieces). Three steps
    from the same init agree to float32 rounding, in metrics and in the updated params."""
    results = {}
    for encoders in ("in_step", "separate"):
        cfg = micro_config(encoders=encoders, cfg_drop_text=0.3, cfg_drop_image=0.3,  # drops exercise both halves
                           encode_chunk_rows=1 if encoders == "separate" else 0)
        trainer = make_trainer(cfg, make_mesh(cfg, jax.devices()[:1]))
        assert (trainer.jitted_encode is None) == (encoders == "in_step")
        programs = trainer.compile_programs()
        assert set(programs) == ({"train"} if encoders == "in_step" else {"encode", "train"})
        compiled, _ = trainer.compile()
        if encoders == "separate":  # the pieces really are a loop
            assert "while" in programs["encode"][0].as_text()
        results[encoders] = run_steps(trainer, compiled, cfg, 3)
    (one, one_params), (two, two_params) = results["in_step"], results["separate"]
    for a, b in zip(one, two):
        for key in ("loss", "grad_norm", "drop_text_fraction", "drop_image_fraction"):
            np.testing.assert_allclose(b[key], a[key], rtol=1e-5, err_msg=key)
    assert one[0]["loss"] != one[2]["loss"]  # the steps really trained
    # Adam's first steps move every param by about lr (1e-3) whatever its gradient's size, so a float32-rounding
    # difference in a near-zero gradient can show as ~1e-5 in a param: 1 % of one step, far below any real change.
    for key, value in one_params.items():
        np.testing.assert_allclose(two_params[key], value, rtol=1e-5, atol=2e-5, err_msg=key)


def test_unknown_encoders_mode_names_the_choices():
    cfg = micro_config(encoders="offline")
    with pytest.raises(TrainConfigError, match=r"train\.encoders='offline'.*in_step, separate"):
        make_trainer(cfg, make_mesh(cfg, jax.devices()[:1]))


def test_frozen_unet_replicated_or_by_the_rules():
    from jax.sharding import PartitionSpec
    specs = {}
    for mode in ("rules", "replicate_unet"):
        cfg = micro_config(frozen_sharding=mode, frozen_dtype="bfloat16")
        trainer = make_trainer(cfg, make_mesh(cfg, jax.devices()[:1]))
        frozen = trainer.state_shardings.frozen
        specs[mode] = {name: {s.spec for s in jax.tree.leaves(frozen[name])} for name in frozen}
        assert {a.dtype.name for a in jax.tree.leaves(trainer.abstract_state.frozen)} == {"bfloat16"}
    assert specs["replicate_unet"]["unet"] == {PartitionSpec()}
    assert specs["rules"]["unet"] != {PartitionSpec()}  # the rules shard UNet kernels over fsdp
    assert specs["replicate_unet"]["vae"] == specs["rules"]["vae"]  # only the UNet moves
    cfg = micro_config(frozen_sharding="everywhere")
    with pytest.raises(state_lib.InitError, match="frozen_sharding='everywhere'.*rules, replicate_unet"):
        make_trainer(cfg, make_mesh(cfg, jax.devices()[:1]))


def test_ordered_remat_step_equals_the_step_without_remat():
    """runtime.remat="ordered" (the full-size default, models/remat.py) inside the real train step, whose batch
    has a 3D and a 2D object (the 2D one passes the single_view mask through every rematted block): two steps give
    the metrics and updated params of runtime.remat="none"."""
    results = {}
    for remat in ("none", "ordered"):
        cfg = micro_config()
        cfg.runtime.remat = remat
        trainer = make_trainer(cfg, make_mesh(cfg, jax.devices()[:1]))
        assert trainer.models.unet.remat == remat
        state = trainer.init(jax.random.key(0))
        batch = to_global(host_batch_example(cfg), trainer.batch_sharding)
        assert not np.all(np.asarray(batch["camera_mask"]))  # a 2D object is there
        metrics = []
        for _ in range(2):
            state, m = trainer.step(state, batch, jax.random.key(1))
            metrics.append(jax.device_get(m))
        results[remat] = metrics, host_tree(state.trainable)
    (plain, plain_params), (ordered, ordered_params) = results["none"], results["ordered"]
    for a, b in zip(plain, ordered):
        for key in ("loss", "grad_norm"):
            np.testing.assert_allclose(b[key], a[key], rtol=1e-5, err_msg=key)
    assert plain[0]["grad_norm"] > 0
    for key, value in plain_params.items():
        np.testing.assert_allclose(ordered_params[key], value, rtol=1e-5, atol=2e-5, err_msg=key)


def test_microbatches_give_the_one_piece_losses_and_params():
    """train.microbatches=2 (gradient accumulation over a lax.scan of two pieces, here one 3D and one 2D object):
    three steps give the metrics and updated params of one piece, with the encoders in the step or apart."""
    results, loops = {}, {}  # loops: while loops in the update program (the CPU attention kernel has its own)
    for name, train in {"one": {}, "two": {"microbatches": 2},
                        "two_separate": {"microbatches": 2, "encoders": "separate"}}.items():
        cfg = micro_config(cfg_drop_text=0.3, cfg_drop_image=0.3, **train)
        trainer = make_trainer(cfg, make_mesh(cfg, jax.devices()[:1]))
        loops[name] = trainer.compile_programs()["train"][0].as_text().count("condition=")
        compiled, _ = trainer.compile()
        results[name] = run_steps(trainer, compiled, cfg, 3)
    assert loops["two"] == loops["one"] + 1, loops  # the pieces really are a loop
    one, one_params = results["one"]
    assert one[0]["loss"] != one[2]["loss"] and one[0]["views_3d"] > 0 and one[0]["views_2d"] > 0
    for name in ("two", "two_separate"):
        metrics, params = results[name]
        for a, b in zip(one, metrics):
            for key in ("loss", "loss_3d", "loss_2d", "grad_norm", "views_3d", "views_2d"):
                np.testing.assert_allclose(b[key], a[key], rtol=1e-5, err_msg=f"{name} {key}")
        for key, value in one_params.items():  # tolerance: see test_separate_encoders_give_the_in_step_losses...
            np.testing.assert_allclose(params[key], value, rtol=1e-5, atol=2e-5, err_msg=f"{name} {key}")


def test_microbatches_that_do_not_split_the_batch_name_the_fix():
    cfg = micro_config(microbatches=3)
    with pytest.raises(TrainConfigError, match=r"train\.microbatches 3.*2 objects.*--config\.train\.microbatches"):
        make_trainer(cfg, make_mesh(cfg, jax.devices()[:1]))


@pytest.mark.parametrize("effort", [-2.0, 1.5])
def test_compile_effort_outside_its_range_names_the_fix(effort):
    cfg = micro_config(compile_effort=effort)
    with pytest.raises(TrainConfigError, match=r"train\.compile_effort=.*outside \[-1, 1\].*--config\.train"):
        make_trainer(cfg, make_mesh(cfg, jax.devices()[:1]))


def _first_loss(cfg) -> float:
    """Loss of one step of `cfg` from init key 0 on the example batch (trainer.step: traced at this call)."""
    trainer = make_trainer(cfg, make_mesh(cfg, jax.devices()[:1]))
    state = trainer.init(jax.random.key(0))
    _, metrics = trainer.step(state, to_global(host_batch_example(cfg), trainer.batch_sharding), jax.random.key(1))
    return float(metrics["loss"])


def test_text_weight_reaches_the_loss_and_one_half_is_the_inference_formula(monkeypatch):
    """train.text_weight is the paper's l in l * txt + 1 * ret (§3.3): it changes the loss; at 0.5 the loss equals
    that of the official inference combination s * txt + (1.5 - s) * ret at s = 0.5, bit for bit."""
    from mvrag_jax.models.attention import FusionWeights
    from mvrag_jax.train import step as step_lib
    losses = {weight: _first_loss(micro_config(text_weight=weight)) for weight in (0.5, 0.2)}
    assert np.isfinite(losses[0.5]) and abs(losses[0.2] - losses[0.5]) > 1e-6 * abs(losses[0.5]), losses

    class OfficialScale:  # the step as before: a plain fusion scale, weights (s, 1.5 - s)
        training = staticmethod(lambda text_weight: jax.numpy.float32(0.5))
    monkeypatch.setattr(step_lib, "FusionWeights", OfficialScale)
    assert FusionWeights.inference(0.5) == (0.5, 1.0) == FusionWeights.training(0.5)
    assert _first_loss(micro_config(text_weight=0.5)) == losses[0.5]


@pytest.mark.parametrize("weight", [-0.1, float("nan")])
def test_a_negative_text_weight_names_the_fix(weight):
    with pytest.raises(TrainConfigError, match=r"train\.text_weight=.*--config\.train\.text_weight"):
        make_trainer(micro_config(text_weight=weight), make_mesh(micro_config(), jax.devices()[:1]))


def test_the_removed_ip_scale_names_its_replacement():
    cfg = micro_config()
    cfg.train.unlock()
    cfg.train.ip_scale = 1.0
    with pytest.raises(TrainConfigError, match=r"train\.ip_scale=1\.0 is gone.*--config\.train\.text_weight"):
        make_trainer(cfg, make_mesh(cfg, jax.devices()[:1]))


@pytest.mark.slow  # two micro compiles: ~60 s of CPU
def test_without_image_tokens_the_retrieved_images_do_not_reach_the_loss():
    """train.image_tokens=False (the text-only base stage): the same step on other retrieved images gives the
    identical loss; with image tokens it does not."""
    losses = {}
    for image_tokens in (True, False):
        cfg = micro_config(trainable="unet", image_tokens=image_tokens)
        trainer = make_trainer(cfg, make_mesh(cfg, jax.devices()[:1]))
        compiled, _ = trainer.compile()
        batch = host_batch_example(cfg)
        other = dict(batch, retrieved=255 - batch["retrieved"])
        state = trainer.init(jax.random.key(0))
        for name, b in (("batch", batch), ("other", other)):
            _, metrics = compiled(jax.tree.map(lambda x: x.copy(), state), to_global(b, trainer.batch_sharding),
                                  jax.random.key(1))
            losses[image_tokens, name] = float(metrics["loss"])
    assert losses[False, "batch"] == losses[False, "other"]
    assert losses[True, "batch"] != losses[True, "other"]


def test_image_tokens_off_with_the_ip_set_names_the_fix():
    cfg = micro_config(trainable="ip", image_tokens=False)
    with pytest.raises(TrainConfigError, match="trainable=unet"):
        make_trainer(cfg, make_mesh(cfg, jax.devices()[:1]))
