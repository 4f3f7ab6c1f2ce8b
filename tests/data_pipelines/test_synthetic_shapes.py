"""The tiny synthetic dataset builds, reads back, and its views are renders from exactly the loader's cameras."""

import numpy as np

from data_pipelines import build, raster, records, synthetic_shapes, transforms
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
    colour, shape = records.as_text(record["object_id"]).split("_")[:2]
    assert records.as_text(record["caption"]) == f"{synthetic_shapes.article(colour)} {colour} {shape}"
    low, high = tiny_cfg.synthetic.elevation_range
    assert np.all((record["elevation"] >= low) & (record["elevation"] <= high))


def test_views_are_renders_from_the_conditioning_cameras(tiny_cfg):
    """Re-create an object from its seed and render it from the cameras the 3D transform puts in the batch."""
    builder, source = _source(tiny_cfg, "multiview")
    config = builder.builder_config
    transform = transforms.MultiviewTransform(tiny_cfg, transforms.Tokenizer())
    for index in (0, 7):
        record = source[index]
        colour, shape, split, number = records.as_text(record["object_id"]).split("_")
        label = synthetic_shapes.class_list(config).index((colour, shape))
        mesh, angles = synthetic_shapes.sample_object(config, colour, shape, synthetic_shapes.object_rng(
            config, split, label, int(number)))
        example = transform(dict(record), np.random.default_rng(0))
        for view, camera in zip(example["images"], example["camera"]):
            rendered = raster.render(mesh, camera, size=config.image_size, fov_deg=config.fov_deg,
                                     supersample=config.supersample)
            np.testing.assert_array_equal(view, rendered)
        # The orbit's cameras are the ones inference asks for: get_camera(F, elevation, first azimuth).
        elevation, azimuth = angles[0]
        np.testing.assert_allclose(example["camera"], get_camera(4, elevation, azimuth), atol=1e-5)


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
