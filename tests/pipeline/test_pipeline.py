"""mvrag_jax/pipeline/pipeline.py on the tiny release: batching, compile reuse, options, text-only generation, errors.

Parity with the official __call__ is the `pipeline_e2e` case (tests/verify/test_harness.py). The pipeline here shares
its compiled stages with the harness (`release_models.programs`) and the case's step counts, so single-object calls
reuse the harness's programs; each stage compiles at most once per batch size.
"""

import dataclasses

import jax
import numpy as np
import pytest

from mvrag_jax.convert.components import release_components
from mvrag_jax.pipeline import ObjectRequest, Pipeline, PipelineError, SamplingOptions
from mvrag_jax.verify.arrays import retrieved_images
from tests.conftest import load_case, write_text_only_release

OPTIONS = SamplingOptions(num_inference_steps=4, prior_steps=3, guidance_scale=5.0, fusion_path="exact")


@pytest.fixture(scope="module", autouse=True)
def full_precision():
    """The harness's matmul precision (part of the compiled-program key), so programs are shared with it."""
    with jax.default_matmul_precision("highest"):
        yield


@pytest.fixture(scope="module")
def pipe(release_models) -> Pipeline:
    names = [c.name for c in release_components(release_models.release)]
    return Pipeline.from_components(release_models.release, {n: release_models.get(n)[0] for n in names},
                                    {n: release_models.get(n)[1] for n in names}, programs=release_models.programs)


def test_load_from_a_checkpoint_uses_its_release_files(tiny_ckpt, pipe):
    loaded = Pipeline.load(ckpt=tiny_ckpt)  # release_files/ serve tokenizer, scheduler and processors
    assert loaded.release.root.name == "release_files"
    assert (loaded.num_views, loaded.image_size, loaded.latent_shape) == (pipe.num_views, pipe.image_size,
                                                                          pipe.latent_shape)
    assert loaded.schedule == pipe.schedule and loaded.dino_processor == pipe.dino_processor
    np.testing.assert_array_equal(np.asarray(loaded.encode_prompts(["a chair"])),
                                  np.asarray(pipe.encode_prompts(["a chair"])))


@pytest.fixture(scope="module")
def requests() -> list[ObjectRequest]:
    """Three objects with k = 2 retrieved images each: different prompts, images and seeds."""
    ret = retrieved_images(load_case("pipeline_e2e"))
    rng = np.random.default_rng(0)
    noise = lambda shape: rng.integers(0, 256, shape, dtype=np.uint8)
    return [ObjectRequest("A red vintage car.", tuple(ret), seed=7),
            ObjectRequest("a wooden chair", (ret[1], noise((20, 36, 3))), seed=8),
            ObjectRequest("a teapot", (noise((40, 40, 3)), ret[0]), seed=9)]


@pytest.fixture(scope="module")
def batched(pipe, requests):
    return pipe.generate(requests, OPTIONS)


def test_batch_of_three_equals_three_single_calls(pipe, requests, batched):
    results, _ = batched
    for request, together in zip(requests, results):
        (alone,), _ = pipe.generate([request], OPTIONS)
        np.testing.assert_allclose(together.images_float, alone.images_float, atol=1e-4, rtol=0)
        np.testing.assert_allclose(together.prior_images, alone.prior_images, atol=1e-4, rtol=0)
        assert together.fusion_weight == pytest.approx(alone.fusion_weight, abs=1e-5)
    assert len({float(r.fusion_weight) for r in results}) == 3  # per-object weights, not one shared scale


def test_same_shapes_never_recompile(pipe, requests, batched):
    results, timings = batched
    before = pipe.programs.compilations
    again, timings_again = pipe.generate(requests, OPTIONS)
    assert pipe.programs.compilations == before and timings_again["compile"] == 0.0
    assert set(timings_again) == {"encode", "prior", "fusion", "main", "decode", "compile"}
    assert timings["compile"] > 0 and all(v >= 0 for v in timings_again.values())
    for first, second in zip(results, again):
        np.testing.assert_array_equal(first.images, second.images)


def test_result_layout(pipe, batched):
    result = batched[0][0]
    views, size = pipe.num_views, pipe.image_size
    assert result.images.shape == (views, size, size, 3) and result.images.dtype == np.uint8
    np.testing.assert_array_equal(result.images, (result.images_float * 255).round().astype(np.uint8))
    assert result.prior_images.shape == (views, size, size, 3)
    assert result.fusion_weight == pytest.approx(max(0.0, result.similarity_score))
    assert result.fusion.view_embeddings.shape[0] == views and result.fusion.retrieved_embeddings.shape[0] == 2


def test_seeds_and_initial_latents(pipe, requests, batched):
    results, _ = batched
    assert not np.allclose(results[0].latents, results[1].latents)
    override = dataclasses.replace(requests[0], seed=123, initial_latents=np.zeros(pipe.latent_shape, np.float32))
    (forced,), _ = pipe.generate([override], OPTIONS)
    (seeded,), _ = pipe.generate([dataclasses.replace(requests[0], seed=123)], OPTIONS)
    assert not np.allclose(forced.latents, seeded.latents)  # the override replaced the seed's noise


def test_fixed_weight_without_prior_and_guidance_one(pipe, requests, batched):
    (fixed,), _ = pipe.generate([requests[0]], dataclasses.replace(OPTIONS, use_prior=False, fusion_weight=0.25))
    assert fixed.prior_images is None and fixed.similarity_score is None and fixed.fusion_weight == 0.25
    assert not np.allclose(fixed.images_float, batched[0][0].images_float, atol=1e-3)
    (plain,), _ = pipe.generate([requests[0]], dataclasses.replace(OPTIONS, guidance_scale=1.0))
    assert np.isfinite(plain.images_float).all()
    assert not np.allclose(plain.images_float, batched[0][0].images_float, atol=1e-3)


def test_mixed_batch_text_only_objects(pipe, requests, batched):
    text_only = ObjectRequest("a teapot", (), seed=9)
    results, _ = pipe.generate([requests[0], text_only], OPTIONS)
    assert results[1].fusion_weight is None and results[1].prior_images is None
    np.testing.assert_allclose(results[0].images_float, batched[0][0].images_float, atol=1e-4, rtol=0)
    assert not np.allclose(results[1].images_float, batched[0][2].images_float, atol=1e-3)  # no image tokens


def test_bad_requests_and_options_are_clear_errors(pipe, requests):
    with pytest.raises(PipelineError, match="fusion_weight"):
        SamplingOptions(use_prior=False)
    with pytest.raises(PipelineError, match="fusion_path"):
        SamplingOptions(fusion_path="gpu")
    with pytest.raises(PipelineError, match=r"initial_latents have shape"):
        pipe.generate([dataclasses.replace(requests[0], initial_latents=np.zeros((3, 2, 2, 4)))], OPTIONS)
    with pytest.raises(PipelineError, match="no requests"):
        pipe.generate([], OPTIONS)


def test_device_fusion_path_gives_the_exact_weight(pipe, requests, batched):
    (device,), _ = pipe.generate([requests[0]], dataclasses.replace(OPTIONS, fusion_path="device"))
    assert device.fusion_weight == pytest.approx(batched[0][0].fusion_weight, abs=1e-6)
    np.testing.assert_allclose(device.images_float, batched[0][0].images_float, atol=1e-4, rtol=0)


def test_text_only_base_release_generates(tmp_path):
    base = Pipeline.load(release=write_text_only_release(tmp_path / "base"))
    assert not base.has_image_branch
    options = SamplingOptions(num_inference_steps=1, prior_steps=1, guidance_scale=1.0)
    (result,), timings = base.generate([ObjectRequest("a chair", (), seed=1)], options)
    assert result.images.shape == (base.num_views, base.image_size, base.image_size, 3)
    assert result.fusion_weight is None and timings["prior"] == 0.0
    with pytest.raises(PipelineError, match="no image branch"):
        base.generate([ObjectRequest("a chair", (np.zeros((8, 8, 3), np.uint8),), seed=1)], options)


def test_dtype_applies_to_every_component(release_models, pipe):
    bf16 = Pipeline.from_components(release_models.release, pipe.configs, pipe.params, dtype="bfloat16")
    assert {getattr(c, "dtype", "bfloat16") for c in bf16.configs.values()} == {"bfloat16"}
    with pytest.raises(PipelineError, match="dtype"):
        Pipeline.from_components(release_models.release, pipe.configs, pipe.params, dtype="float16")


def test_2d_mode_is_one_view_without_camera_or_prompt_suffix(pipe, requests):
    """mode='2d' (data_pipelines/variants.py): the UNet's single-view mode, as training's 2D objects."""
    from mvrag_jax.diffusion.sample import sample_batch
    np.testing.assert_array_equal(np.asarray(pipe.encode_prompts(["a chair, 3d asset"], suffix=False)),
                                  np.asarray(pipe.encode_prompts(["a chair"])))  # suffix=False: the prompt as it is
    single = Pipeline.from_components(pipe.release, pipe.configs, pipe.params, num_views=1)
    options = SamplingOptions(num_inference_steps=2, guidance_scale=5.0, use_prior=False, fusion_weight=0.5)
    request = requests[1]
    (flat,), _ = single.generate([request], dataclasses.replace(options, mode="2d"))
    assert flat.images.shape == (1, single.image_size, single.image_size, 3)
    expected = sample_batch(single.configs["unet"], single.params["unet"], single.schedule,
                            single._initial_latents([request]), single.encode_prompts([request.prompt], suffix=False),
                            None, single.encode_retrieved([request.retrieved]), 0.5, 5.0, 2)
    np.testing.assert_allclose(flat.latents, np.asarray(expected)[0], rtol=1e-5, atol=1e-5)
    (with_camera,), _ = single.generate([request], options)  # mode='3d': camera and ', 3d asset'
    assert np.abs(with_camera.latents - flat.latents).max() > 1e-3
