"""`mvrag data variants` on the tiny release: one view in 2D mode, conditioned on a render, written per object."""

import json

import numpy as np
import pytest
from PIL import Image

from data_pipelines import variants
from mvrag_jax.pipeline import ObjectRequest, Pipeline, PipelineError, SamplingOptions
from tests.conftest import TINY_RELEASE
from tests.data_pipelines.test_mv_renders import EXTRAS, ORBIT, _write_object

SETTINGS = variants.Settings(per_object=1, steps=2, guidance=2.0, seed=0)


@pytest.fixture(scope="module")
def pipe():
    return Pipeline.load(release=TINY_RELEASE, num_views=1)


@pytest.fixture
def renders(tmp_path):
    root = tmp_path / "renders"
    root.mkdir()
    for name, caption in (("wedge_a", "a green wedge"), ("wedge_b", "a small green wedge")):
        _write_object(root, name, ORBIT + EXTRAS, caption=caption, size=48, rgba_first=True)
    (root / "not_an_object").mkdir()  # no cameras.json: passed over
    return root


def _variant(root, name, index=0):
    return np.asarray(Image.open(root / name / "variants" / f"variant_{index:03d}.png"))


def test_a_variant_per_object_at_the_renders_size_differing_per_seed(pipe, renders):
    summary = variants.make_variants(renders, release=str(TINY_RELEASE), settings=SETTINGS, pipeline=pipe)
    assert summary == {"objects": 2, "variants": 2, "renders": str(renders)}
    assert not (renders / "not_an_object" / "variants").exists()
    first = {name: _variant(renders, name) for name in ("wedge_a", "wedge_b")}
    for name, image in first.items():
        assert image.shape == (48, 48, 3) and image.dtype == np.uint8  # the render's size (the model makes 32)
        manifest = json.loads((renders / name / "variants" / "variants.json").read_text())
        assert set(manifest) == {"variant_000.png"} and manifest["variant_000.png"]["view"].endswith(".png")
    assert not np.array_equal(first["wedge_a"], first["wedge_b"])
    variants.make_variants(renders, settings=SETTINGS, pipeline=pipe)  # a rerun: the same files
    np.testing.assert_array_equal(_variant(renders, "wedge_a"), first["wedge_a"])
    variants.make_variants(renders, settings=variants.Settings(per_object=2, steps=2, guidance=2.0, seed=1),
                           pipeline=pipe)
    for name in first:  # another seed: other variants
        assert np.abs(_variant(renders, name).astype(int) - first[name]).mean() > 1.0
        assert not np.array_equal(_variant(renders, name, 1), _variant(renders, name, 0))


def test_plan_draws_views_and_seeds_from_the_seed(renders):
    jobs = variants.plan_jobs(renders, variants.Settings(per_object=3, seed=0))
    assert [j.folder.name for j in jobs] == ["wedge_a"] * 3 + ["wedge_b"] * 3
    assert jobs == variants.plan_jobs(renders, variants.Settings(per_object=3, seed=0))
    assert [j.seed for j in jobs] != [j.seed for j in variants.plan_jobs(renders, variants.Settings(per_object=3,
                                                                                                     seed=1))]
    assert {j.prompt for j in jobs} == {"a green wedge", "a small green wedge"}


def test_2d_mode_needs_one_view_and_a_renders_folder(pipe, tmp_path):
    four_views = Pipeline.from_components(pipe.release, pipe.configs, pipe.params, num_views=4)
    request = ObjectRequest("a cube", (np.zeros((8, 8, 3), np.uint8),))
    with pytest.raises(PipelineError, match="num_views=4; load it with num_views=1"):  # before any compile
        four_views.generate([request], SamplingOptions(mode="2d", use_prior=False, fusion_weight=0.5))
    with pytest.raises(PipelineError, match="mode='3D'"):
        SamplingOptions(mode="3D")
    with pytest.raises(variants.VariantsError, match="no object folder with cameras.json"):
        variants.make_variants(tmp_path, settings=SETTINGS, pipeline=pipe)


def test_cli_names_what_is_missing(capsys):
    from mvrag_jax.cli import main
    assert main(["mvrag", "data", "variants", "--compile_cache_dir=none"]) == 2
    assert "needs --renders" in capsys.readouterr().err
