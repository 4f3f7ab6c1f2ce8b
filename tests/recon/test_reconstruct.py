"""mvrag_jax/recon/reconstruct.py and `mvrag reconstruct`, on the tiny official LGM (tests/reference/lgm_tiny)."""

import json

import numpy as np
import pytest
from PIL import Image

from mvrag_jax.cli import main
from mvrag_jax.convert.lgm import load_lgm
from mvrag_jax.models import lgm
from mvrag_jax.recon import cameras, ply, reconstruct, render
from tests.conftest import REFERENCE

TINY = REFERENCE / "lgm_tiny" / "model_fp16.safetensors"
ARGS = ["--lgm", str(TINY), "--lgm-input-size", "16", "--render-size", "24", "--compile-cache-dir", "none"]


def _object(folder, seed, elevation=None):
    folder.mkdir(parents=True)
    rng = np.random.default_rng(seed)
    for i in range(4):
        Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(folder / f"view_{i}.png")
    if elevation is not None:
        (folder / "record.json").write_text(json.dumps({"settings": {"elevation": elevation}}))
    return folder


def test_reconstruct_writes_ply_renders_gif_and_skips_done_objects(tmp_path, capsys):
    _object(tmp_path / "gen" / "0_a_red_car_s0", 0, elevation=15.0)
    _object(tmp_path / "gen" / "1_a_chair_s0", 1)
    out = tmp_path / "assets"
    assert main(["mvrag", "reconstruct", "--views", str(tmp_path / "gen"), "--out", str(out), "--batch", "2",
                 "--elevation", "0", *ARGS]) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["reconstructed"] == 2 and summary["seconds_per_object"]["lgm"] > 0
    config, params = load_lgm(TINY, input_size=16)
    for name, elevation in (("0_a_red_car_s0", 15.0), ("1_a_chair_s0", 0.0)):
        folder = out / name
        record = json.loads((folder / "recon.json").read_text())
        assert record["generation_elevation"] == elevation and record["gaussians"] == config.num_gaussians
        assert len(record["renders"]) == 18 and record["render_azimuths"][1] == 20.0
        gif = Image.open(folder / "turntable.gif")
        assert gif.n_frames == 18 and gif.size == (24, 24)
        # The asset is LGM's: the tiny network on these views at this elevation, rendered from the .ply again.
        views = reconstruct.read_views(tmp_path / "gen" / name)
        inputs = cameras.lgm_inputs(views[None] / 255.0, cameras.lgm_elevation(elevation), 16)
        expected = np.asarray(lgm.forward_gaussians(config, params, inputs))[0]
        stored = ply.read_ply(folder / "gaussians.ply")
        assert len(stored) == record["gaussians_in_ply"] <= len(expected)
        np.testing.assert_allclose(stored, expected[expected[:, 3] >= ply.MIN_OPACITY], rtol=1e-4, atol=1e-5)
        view = cameras.world_to_camera(cameras.lgm_elevation(elevation), 40.0)
        again, _ = render.render(stored, view, render.RenderSettings(height=24, width=24))
        png = np.asarray(Image.open(folder / "render_02.png"), np.int32)
        # Pruned Gaussians (opacity < 0.005) may still add up to ~1 level where alpha > 1/255.
        assert np.abs(png - np.round(np.asarray(again) * 255)).max() <= 2
    # A rerun skips both; a new one in the same --out only does the new object.
    assert main(["mvrag", "reconstruct", "--views", str(tmp_path / "gen"), "--out", str(out), *ARGS]) == 0
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["skipped"] == 2


def test_single_object_folder_and_rerender_views(tmp_path):
    folder = _object(tmp_path / "obj", 3)
    assert reconstruct.find_objects(folder) == [folder]
    config, params = load_lgm(TINY, input_size=16)
    views = [reconstruct.read_views(folder)] * 3
    settings = reconstruct.ReconstructSettings(num_renders=4, render_size=16, batch=2)
    renders = reconstruct.rerender_views(config, params, views, elevation=15.0, settings=settings)
    assert len(renders) == 3 and renders[0].shape == (4, 16, 16, 3) and renders[0].dtype == np.uint8
    np.testing.assert_array_equal(renders[0], renders[2])  # batching (and padding) does not change an object
    assert renders[0].std() > 0


def test_bad_inputs_are_one_line_errors(tmp_path, capsys):
    folder = _object(tmp_path / "obj", 4)
    (folder / "view_3.png").unlink()
    assert main(["mvrag", "reconstruct", "--views", str(folder), "--out", str(tmp_path / "o"), *ARGS]) == 2
    err = capsys.readouterr().err
    assert "exactly 4 views" in err and "Traceback" not in err
    assert main(["mvrag", "reconstruct", "--views", str(tmp_path / "none"), "--out", str(tmp_path / "o"), *ARGS]) == 2
    assert "does not exist" in capsys.readouterr().err
    _object(tmp_path / "ok", 5)
    assert main(["mvrag", "reconstruct", "--views", str(tmp_path / "ok"), "--out", str(tmp_path / "o"),
                 "--lgm", str(tmp_path / "missing.safetensors"), "--compile-cache-dir", "none"]) == 2
    assert "model_fp16_fixrot.safetensors" in capsys.readouterr().err


@pytest.mark.slow
def test_generate_reconstruct_goes_from_a_prompt_to_a_3d_asset(tmp_path, capsys):
    from tests.conftest import TINY_RELEASE
    out = tmp_path / "out"
    assert main(["mvrag", "generate", "--release", str(TINY_RELEASE), "--prompt", "a red car", "--steps", "1",
                 "--prior-steps", "1", "--out", str(out), "--reconstruct", *ARGS[:4], "--compile-cache-dir",
                 "none"]) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["generated"] == 1 and summary["reconstruct"]["reconstructed"] == 1
    [folder] = list(out.iterdir())
    assert {"view_0.png", "gaussians.ply", "render_17.png", "turntable.gif", "recon.json"} <= {p.name for p in
                                                                                                 folder.iterdir()}
    assert json.loads((folder / "recon.json").read_text())["generation_elevation"] == 15.0
    assert main(["mvrag", "generate", "--release", str(TINY_RELEASE), "--prompt", "x", "--out", str(out),
                 "--reconstruct", "--compile-cache-dir", "none"]) == 2
    assert "--reconstruct needs --lgm" in capsys.readouterr().err
