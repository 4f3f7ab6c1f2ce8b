"""The tiny synthetic dataset builds, reads back, and its views are renders from exactly the loader's cameras."""

import numpy as np
import pytest

from configs import data
from data_pipelines import background, build, raster, records, synthetic_shapes, transforms
from mvrag_jax.inputs.camera import get_camera


def _source(cfg, kind, split="train"):
    builder = build.prepare(cfg, "synthetic_shapes", kind)
    return builder, builder.as_data_source(split=split)


def test_multiview_split_reads_back(tiny_cfg):
    builder, source = _source(tiny_cfg, "multiview")
    num_classes = len(tiny_cfg.synthetic.shapes) * len(tiny_cfg.synthetic.colours)
    assert len(source) == num_classes * tiny_cfg.synthetic.train_per_class
    assert builder.info.splits["validation"].num_examples == num_classes * tiny_cfg.synthetic.validation_per_class
    record = source[0]
    num_views = tiny_cfg.num_views + tiny_cfg.synthetic.extra_views
    assert len(record["views"]) == len(record["elevation"]) == len(record["azimuth"]) == num_views
    np.testing.assert_array_equal(record["orbits"], [np.arange(tiny_cfg.num_views)])
    assert records.decode_image(record["views"][0]).shape == (32, 32, 3)
    rgba = background.decode_rgba(record["views"][0])  # stored with coverage alpha: the loader picks the grey
    assert rgba[0, 0, 3] == 0 and rgba[16, 16, 3] == 255 and len(record["variants"]) == 0
    colour, shape = records.as_text(record["object_id"]).split("_")[:2]
    assert records.as_text(record["caption"]) == f"{synthetic_shapes.article(colour)} {colour} {shape}"
    low, high = tiny_cfg.mode_3d.elevation_range
    assert np.all((record["elevation"] >= low) & (record["elevation"] <= high))


def _check_views_are_renders_from_their_cameras(cfg, indices):
    """Re-create objects from their seeds, render them from the cameras the 3D transform puts in the batch, and
    composite over the object's grey: exactly the batch's views. Returns the objects' orbit elevations and greys."""
    builder, source = _source(cfg, "multiview")
    config = builder.builder_config
    transform = transforms.MultiviewTransform(cfg, transforms.Tokenizer())
    elevations, greys = [], []
    for index in indices:
        record = source[index]
        colour, shape, split, number = records.as_text(record["object_id"]).split("_")
        label = synthetic_shapes.class_list(config).index((colour, shape))
        mesh, angles = synthetic_shapes.sample_object(config, colour, shape, synthetic_shapes.object_rng(
            config, split, label, int(number)))
        example = transform(dict(record), np.random.default_rng(index))
        grey = int(example["images"][0, 0, 0, 0])  # a corner: background
        for view, camera in zip(example["images"], example["camera"]):
            rgba = raster.render(mesh, camera, size=config.image_size, fov_deg=config.fov_deg, background=None,
                                 supersample=config.supersample)
            np.testing.assert_array_equal(view, background.composite(rgba, grey))
            # and, within rounding of the stored alpha, what rendering straight onto that grey gives
            direct = raster.render(mesh, camera, size=config.image_size, fov_deg=config.fov_deg, background=grey,
                                   supersample=config.supersample)
            assert np.abs(view.astype(int) - direct).max() <= 1
        # The orbit's cameras are the ones inference asks for: get_camera(F, elevation, first azimuth).
        elevation, azimuth = angles[0]
        np.testing.assert_allclose(example["camera"], get_camera(4, elevation, azimuth), atol=1e-5)
        np.testing.assert_array_equal(record["elevation"][:4], elevation)
        elevations.append(elevation)
        greys.append(grey)
    return elevations, greys


def test_views_are_renders_from_the_conditioning_cameras(tiny_cfg):
    tiny_cfg.background = "random"
    elevations, greys = _check_views_are_renders_from_their_cameras(tiny_cfg, range(0, 42, 3))
    assert all(-5.0 <= e <= 30.0 for e in elevations) and max(elevations) - min(elevations) > 10
    low, high = tiny_cfg.background_range
    assert all(low <= g <= high for g in greys) and len(set(greys)) >= 8  # a grey per object


def test_orbits_follow_the_configured_elevation_range(tiny_cfg, tmp_path):
    tiny_cfg.data_dir = str(tmp_path / "data")
    tiny_cfg.mode_3d.elevation_range = (20.0, 24.0)
    tiny_cfg.synthetic.update(shapes=("wedge", "cube"), colours=("red",))
    elevations, _ = _check_views_are_renders_from_their_cameras(tiny_cfg, range(4))
    assert all(20.0 <= e <= 24.0 for e in elevations)
    _, source = _source(tiny_cfg, "multiview")
    everything = np.concatenate([source[i]["elevation"] for i in range(len(source))])
    assert 20.0 <= everything.min() and everything.max() <= 24.0  # extra views too


@pytest.mark.parametrize("value", [(30.0, -5.0), (-95.0, 10.0), (1.0, 2.0, 3.0)])
def test_a_bad_elevation_range_is_a_clear_error(tiny_cfg, value):
    tiny_cfg.mode_3d.elevation_range = value
    with pytest.raises(records.ElevationRangeError, match=r"-90 <= low <= high <= 90"):
        synthetic_shapes.make_config(tiny_cfg, "multiview")


def test_class_split_is_grouped_by_label(tiny_cfg):
    builder, source = _source(tiny_cfg, "classes")
    per_class = tiny_cfg.synthetic.train_per_class
    counts = builder.info.metadata["class_counts"]["train"]
    assert counts == [per_class] * len(builder.info.metadata["class_names"])
    labels = [int(source[i]["label"]) for i in range(len(source))]
    assert labels == [i // per_class for i in range(len(source))]
    record = source[per_class * 4]
    assert records.as_text(record["class_name"]) == builder.info.metadata["class_names"][4]
    assert records.decode_image(record["image"]).shape == (32, 32, 3)


def test_config_name_tracks_every_parameter(tiny_cfg):
    name = synthetic_shapes.make_config(tiny_cfg, "multiview").name
    assert name == synthetic_shapes.make_config(tiny_cfg, "multiview").name
    tiny_cfg.synthetic.fov_deg = 40.0
    assert synthetic_shapes.make_config(tiny_cfg, "multiview").name != name
    assert synthetic_shapes.make_config(tiny_cfg, "classes").name.startswith("classes_32px_")


def test_held_out_classes_are_in_no_split_and_bad_names_are_refused():
    cfg = data.get_config("size=tiny")
    held_out = ("blue torus", "red cone")
    cfg.synthetic.held_out = held_out
    config = synthetic_shapes.make_config(cfg, "multiview")
    classes = {f"{colour} {shape}" for colour, shape in synthetic_shapes.class_list(config)}
    assert len(classes) == 21 - 2 and not classes & set(held_out)
    plain = data.get_config("size=tiny")  # no held-out classes: the dataset keeps its name (and directory)
    assert "held_out" not in synthetic_shapes.make_config(plain, "multiview").description
    cfg.synthetic.held_out = ("purple cube",)  # not among size=tiny's colours
    with pytest.raises(ValueError, match=r"\['purple cube'\] are not classes"):
        synthetic_shapes.make_config(cfg, "multiview")
