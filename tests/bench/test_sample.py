"""mvrag_jax/bench/sample.py: whole-sample timings; the steady state compiles nothing."""

import json

import pytest

from configs import tiny



def test_bench_sample_first_call_compiles_then_steady_state_does_not():
    from mvrag_jax.bench.sample import bench_sample
    cfg = tiny.get_config()
    cfg.model.unet.update(image_size=8, channel_mult=(1,), attention_resolutions=(1,))  # one level: a fast compile
    result = bench_sample(cfg, objects=(2,), calls=2, sample_steps=2, prior_steps=1)
    json.dumps(result)
    assert result["component"] == "sample" and result["num_views"] == 4 and result["num_retrieved"] == 2
    assert [run["objects"] for run in result["runs"]] == [2]
    for run in result["runs"]:
        assert run["compile_s"] > 0  # a new number of objects is a new shape: compiled once, on the first call
        assert run["stages_s"]["compile"] == 0  # ... and never again
        assert 0 < run["call_min_s"] <= run["call_s"] < run["first_call_s"]
        assert {"encode", "prior", "fusion", "main", "decode"} <= set(run["stages_s"])
        assert run["per_object_s"] == pytest.approx(run["call_s"] / run["objects"])


def test_bench_sample_rejects_zero_objects():
    from mvrag_jax.bench.sample import bench_sample
    with pytest.raises(ValueError, match="objects >= 1"):
        bench_sample(tiny.get_config(), objects=(0,))


def test_sized_release_crops_the_clip_processor_to_the_config_and_copies_no_weights(tmp_path):
    from configs import mvrag_sd21
    from mvrag_jax.bench.sample import sized_release
    from mvrag_jax.inputs import images
    from mvrag_jax.inputs.release import Release
    out = sized_release(mvrag_sd21.get_config(), tmp_path / "release")
    assert not list(out.rglob("*.safetensors"))
    processor = images.CLIPImageProcessorConfig.from_release(Release.open(out))
    assert (processor.crop_hw, processor.shortest_edge) == ((224, 224), 224)  # the tiny release's is 32
    assert (out / "tokenizer" / "merges.txt").is_file()
