"""mv_renders: a manual_dir with good and deliberately bad objects builds; bad ones are skipped and reported."""

import json

import numpy as np
import pytest
from PIL import Image

from data_pipelines import augment, background, build, loader, mv_renders, raster, records, shapes
from mvrag_jax.inputs.camera import get_camera


def _write_object(root, name, angles, *, caption="a green wedge.", size=48, rgba_first=False):
    folder = root / name
    folder.mkdir()
    mesh = shapes.make_mesh("wedge", "green", scale=0.5)
    views = []
    for i, (elevation, azimuth) in enumerate(angles):
        image = raster.render(mesh, get_camera(1, elevation, azimuth)[0], size=size, supersample=1)
        if rgba_first and i == 0:  # transparent background: must come out grey after compositing
            alpha = np.where(raster.silhouette(image), 255, 0).astype(np.uint8)
            Image.fromarray(np.dstack([image, alpha])).save(folder / f"{i:03d}.png")
        else:
            Image.fromarray(image).save(folder / f"{i:03d}.png")
        views.append({"file": f"{i:03d}.png", "elevation": elevation, "azimuth": azimuth})
    (folder / "cameras.json").write_text(json.dumps({"views": views}))
    if caption is not None:
        (folder / "caption.txt").write_text(caption + "\n")
    return folder


ORBIT = [(10.0, 20.0), (10.0, 110.0), (10.0, 200.0), (10.0, 290.0)]
EXTRAS = [(25.0, 47.0), (-3.0, 300.0)]


@pytest.fixture
def manual_dir(tmp_path):
    root = tmp_path / "renders"
    root.mkdir()
    good = _write_object(root, "good_one_orbit", ORBIT + EXTRAS, rgba_first=True)
    (good / "variants").mkdir()
    for i, colour in enumerate(((250, 0, 0), (0, 250, 0), (0, 0, 250))):  # any size: stored at image_size
        Image.fromarray(np.full((40, 56, 3), colour, np.uint8)).save(good / "variants" / f"variant_{i:03d}.png")
    two_orbits = ORBIT + [(30.0, a - 360.0) for a in (45.0, 135.0, 225.0, 315.0)] + EXTRAS[:1]  # azimuths < 0 wrap
    _write_object(root, "good_two_orbits", two_orbits)
    _write_object(root, "no_caption", ORBIT + EXTRAS, caption=None)
    (_write_object(root, "broken_view", ORBIT + EXTRAS) / "002.png").write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    _write_object(root, "no_orbit", [(10.0, 0.0), (10.0, 80.0), (10.0, 180.0), (10.0, 270.0)] + EXTRAS)
    (_write_object(root, "bad_json", ORBIT + EXTRAS) / "cameras.json").write_text("{not json")
    _write_object(root, "no_extras", ORBIT)
    _write_object(root, "orbit_too_high", [(45.0, a) for a in (0.0, 90.0, 180.0, 270.0)] + EXTRAS)
    (_write_object(root, "nan_angle", ORBIT + EXTRAS) / "cameras.json").write_text(
        '{"views": [{"file": "000.png", "elevation": NaN, "azimuth": 0}]}')
    (root / "stray_file.txt").write_text("not an object")
    return root


def test_build_skips_and_reports_bad_objects(tiny_cfg, manual_dir, tmp_path):
    tiny_cfg.data_dir, tiny_cfg.mv_renders.manual_dir = str(tmp_path / "data"), str(manual_dir)
    builder = build.prepare(tiny_cfg, "mv_renders")
    source = builder.as_data_source(split="train")
    assert sorted(records.as_text(source[i]["object_id"]) for i in range(len(source))) == [
        "good_one_orbit", "good_two_orbits"]
    reasons = {item["item"]: item["reason"] for item in builder.info.metadata["skipped"]}
    assert set(reasons) == {"no_caption", "broken_view", "no_orbit", "bad_json", "no_extras", "nan_angle",
                            "orbit_too_high"}
    assert "elevations [45.0], none inside mode_3d.elevation_range [-5.0, 30.0]" in reasons["orbit_too_high"]
    assert "caption.txt" in reasons["no_caption"] and "002.png" in reasons["broken_view"]
    assert "90 degrees apart" in reasons["no_orbit"] and "elevation=nan" in reasons["nan_angle"]
    record = next(source[i] for i in range(len(source)) if source[i]["object_id"] == b"good_two_orbits")
    np.testing.assert_array_equal(record["orbits"], [[0, 1, 2, 3], [4, 5, 6, 7]])
    first = next(source[i] for i in range(len(source)) if source[i]["object_id"] == b"good_one_orbit")
    view = records.decode_image(first["views"][0])
    assert view.shape == (32, 32, 3) and tuple(view[0, 0]) == (127, 127, 127)  # resized; alpha -> grey
    rgba = background.decode_rgba(first["views"][0])  # alpha kept for the loader's per-object grey
    assert rgba[0, 0, 3] == 0 and rgba[16, 16, 3] == 255
    variants = [records.decode_image(v) for v in first["variants"]]
    assert [v.shape for v in variants] == [(32, 32, 3)] * 3 and tuple(variants[1][5, 5]) == (0, 250, 0)
    assert len(record["variants"]) == 0  # no variants/ folder


def test_loader_reads_mv_renders_in_3d_mode(tiny_cfg, manual_dir, tmp_path):
    tiny_cfg.data_dir, tiny_cfg.mv_renders.manual_dir = str(tmp_path / "data"), str(manual_dir)
    tiny_cfg.mode_3d.dataset = "mv_renders"
    tiny_cfg.mix.weight_2d = 0.0
    batch = next(iter(loader.make_dataset(tiny_cfg, shard=loader.grain.sharding.NoSharding())))
    assert batch["images"].shape == (4, 4, 32, 32, 3) and batch["retrieved"].shape == (4, 2, 32, 32, 3)
    assert set(batch["mode"].tolist()) == {0} and batch["camera_mask"].tolist() == [1, 1, 1, 1]
    orbit_cameras = [get_camera(4, 10.0, 20.0), get_camera(4, 30.0, 45.0)]
    for camera in batch["camera"]:
        assert any(np.allclose(camera, expected, atol=1e-5) for expected in orbit_cameras)


def test_find_orbits_wraps_azimuths_and_tolerates_rounding():
    elevation = np.array([5.0, 5.0, 5.2, 5.0, 20.0, 5.0])
    azimuth = np.array([350.0, 80.3, 170.0, 260.0, 10.0, 100.0])
    np.testing.assert_array_equal(mv_renders.find_orbits(elevation, azimuth, 4), [[0, 1, 2, 3]])
    assert mv_renders.find_orbits(elevation, azimuth + np.array([0, 0, 3, 0, 0, 0]), 4).shape == (0, 4)


def test_unbuilt_manual_dataset_says_what_to_set(tiny_cfg, tmp_path):
    tiny_cfg.data_dir = str(tmp_path / "empty")
    with pytest.raises(build.DatasetNotBuiltError, match="mv_renders.manual_dir"):
        build.prepare(tiny_cfg, "mv_renders")


def test_loader_mixes_in_the_variants_of_objects_that_have_them(tiny_cfg, manual_dir, tmp_path):
    tiny_cfg.data_dir, tiny_cfg.mv_renders.manual_dir = str(tmp_path / "data"), str(manual_dir)
    tiny_cfg.mode_3d.update(dataset="mv_renders", variant_prob=1.0)
    tiny_cfg.mix.weight_2d = 0.0
    iterator = iter(loader.make_dataset(tiny_cfg, shard=loader.grain.sharding.NoSharding(), provenance=True))
    flags = np.concatenate([next(iterator)["retrieved_ops"] for _ in range(4)])  # [16 examples, k]
    per_object = (flags == augment.VARIANT).all(axis=1)
    assert per_object.any() and not per_object.all()  # good_one_orbit: variants only; good_two_orbits: none
    assert ((flags == augment.VARIANT).any(axis=1) == per_object).all()
