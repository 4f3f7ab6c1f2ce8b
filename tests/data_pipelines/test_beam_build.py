"""data_pipelines/build.py --beam: synthetic_shapes rendered on Apache Beam's DirectRunner gives the records of the
plain build, in hosts x loader workers ArrayRecord shards."""

import pathlib

import pytest

from data_pipelines import build
from tests.data_pipelines.conftest import tiny_config

beam = pytest.importorskip("apache_beam")


def _records(builder, split):
    source = builder.as_data_source(split=split)
    return [source[i] for i in range(len(source))]


def _same(a, b):
    assert a.keys() == b.keys()
    for key in a:
        assert type(a[key]) is type(b[key]) and (a[key] == b[key]).all() if hasattr(a[key], "all") else \
            a[key] == b[key], key


@pytest.mark.parametrize("kind", ["multiview", "classes"])
def test_beam_build_gives_the_plain_builds_records_in_loader_shards(tmp_path, kind):
    plain_cfg, beam_cfg = tiny_config(tmp_path / "plain"), tiny_config(tmp_path / "beam")
    beam_cfg.loader.num_workers = 3
    plain = build.prepare(plain_cfg, "synthetic_shapes", kind)
    shards = build.loader_shards(beam_cfg, hosts=2)
    assert shards == 6
    on_beam = build.prepare(beam_cfg, "synthetic_shapes", kind, num_shards=shards,
                            beam_options=["--runner=DirectRunner", "--direct_num_workers=1"])
    assert on_beam.data_dir.endswith(pathlib.Path(plain.data_dir).name)  # same config, same version folder
    for split in ("train", "validation"):
        assert on_beam.info.splits[split].num_shards == 6
        files = list(pathlib.Path(on_beam.data_dir).glob(f"*-{split}.array_record-*"))
        assert len(files) == 6
        want, got = _records(plain, split), _records(on_beam, split)
        assert len(want) == len(got) > 0
        ident = "object_id" if kind == "multiview" else "image_id"
        for a, b in zip(sorted(want, key=lambda r: r[ident]), sorted(got, key=lambda r: r[ident])):
            _same(a, b)
    assert on_beam.info.metadata["class_names"] == plain.info.metadata["class_names"]
    assert on_beam.info.metadata["class_counts"] == plain.info.metadata["class_counts"]


def test_beam_is_refused_for_builders_not_ported(tmp_path):
    cfg = tiny_config(tmp_path)
    cfg.mv_renders.manual_dir = str(tmp_path)
    with pytest.raises(ValueError, match="--beam builds synthetic_shapes so far"):
        build.prepare(cfg, "mv_renders", beam_options=[])
    with pytest.raises(ValueError, match="--hosts 0"):
        build.loader_shards(cfg, 0)
