"""grain loader: fixed shapes, deterministic 1:1 mixing, exact resume, corrupt-record skipping, disjoint host shards."""

import glob
import json
import logging
import shutil

import grain
import jax
import numpy as np
import pytest
from array_record.python import array_record_module

from data_pipelines import build, loader
from mvrag_jax.train.data import to_global

NO_SHARDING = grain.sharding.NoSharding()


def _take(iterator, count):
    return [next(iterator) for _ in range(count)]


def _assert_same(batches_a, batches_b):
    assert len(batches_a) == len(batches_b)
    for a, b in zip(batches_a, batches_b):
        assert a.keys() == b.keys()
        for key in a:
            np.testing.assert_array_equal(a[key], b[key], err_msg=key)


def test_batches_have_fixed_shapes_and_modes_alternate(tiny_cfg):
    batches = _take(iter(loader.make_dataset(tiny_cfg, shard=NO_SHARDING)), 4)
    expected = {"images": ((4, 4, 32, 32, 3), np.uint8), "view_mask": ((4, 4), np.int32),
                "camera": ((4, 4, 16), np.float32), "camera_mask": ((4,), np.int32),
                "retrieved": ((4, 2, 32, 32, 3), np.uint8), "input_ids": ((4, 77), np.int32), "mode": ((4,), np.int32)}
    for batch in batches:
        assert {k: (v.shape, v.dtype) for k, v in batch.items()} == expected
    assert [b["mode"].tolist() for b in batches] == [[0] * 4, [1] * 4] * 2
    assert [b["camera_mask"].tolist() for b in batches] == [[1] * 4, [0] * 4] * 2
    tiny_cfg.images_dtype = "float32"
    images = next(iter(loader.make_dataset(tiny_cfg, shard=NO_SHARDING)))["images"]
    assert images.dtype == np.float32 and -1.0 <= images.min() and images.max() <= 1.0
    np.testing.assert_allclose((images + 1) * 127.5, batches[0]["images"], atol=1e-4)


def test_mixing_is_deterministic_and_follows_the_weights(tiny_cfg):
    first = _take(iter(loader.make_dataset(tiny_cfg, shard=NO_SHARDING)), 4)
    tiny_cfg.loader.read_threads = 3  # threads change timing, never content: seeds are per record position
    _assert_same(first, _take(iter(loader.make_dataset(tiny_cfg, shard=NO_SHARDING)), 4))
    tiny_cfg.mix.weight_3d = 2.0
    assert [b["mode"][0] for b in _take(iter(loader.make_dataset(tiny_cfg, shard=NO_SHARDING)), 6)] == [0, 0, 1] * 2
    tiny_cfg.mix.update(weight_3d=1.0, per="example")
    batch = next(iter(loader.make_dataset(tiny_cfg, shard=NO_SHARDING)))
    assert batch["mode"].tolist() == [0, 1, 0, 1] and batch["view_mask"].sum(axis=1).tolist() == [4, 1, 4, 1]


def _check_resume(cfg, before=3, after=4):
    iterator = iter(loader.make_dataset(cfg, shard=NO_SHARDING))
    _take(iterator, before)
    state = json.loads(json.dumps(iterator.get_state()))  # what a checkpoint stores and gives back
    uninterrupted = _take(iterator, after)
    resumed_iterator = iter(loader.make_dataset(cfg, shard=NO_SHARDING))
    resumed_iterator.set_state(state)
    _assert_same(uninterrupted, _take(resumed_iterator, after))
    for it in (iterator, resumed_iterator):
        it.close()


def test_resume_reproduces_the_uninterrupted_run(tiny_cfg):
    tiny_cfg.loader.prefetch = 2  # thread prefetch in the consuming process
    _check_resume(tiny_cfg, before=10, after=6)  # 3D and 2D each pass their 42-record epoch: reshuffled on resume too


def test_resume_with_worker_processes(tiny_cfg):
    """Two workers interleave one mode's batches (each mode has its own pool; mixing them is tested above)."""
    tiny_cfg.mix.weight_2d = 0.0
    tiny_cfg.loader.update(num_workers=2, prefetch=1)
    _check_resume(tiny_cfg, before=3, after=3)


def _damage_records(path: str, damage: dict) -> None:
    reader = array_record_module.ArrayRecordReader(path)
    stored = list(reader.read_all())
    reader.close()
    for index, change in damage.items():
        stored[index] = change(stored[index])
    writer = array_record_module.ArrayRecordWriter(path, "group_size:1")
    for record in stored:
        writer.write(record)
    writer.close()


def _break_png(record: bytes) -> bytes:
    start = record.find(b"\x89PNG")  # keep the length: the record still parses, the image does not decode
    return record[:start + 8] + b"\x00" * 24 + record[start + 32:]


@pytest.fixture
def damaged_cfg(tiny_cfg, tiny_data_dir, tmp_path):
    shutil.copytree(tiny_data_dir, tmp_path / "data")
    tiny_cfg.data_dir = str(tmp_path / "data")
    tiny_cfg.mix.weight_2d = 0.0
    tiny_cfg.loader.update(num_epochs=1, shuffle=False)
    return tiny_cfg


def _train_file(cfg) -> str:
    return glob.glob(f"{build.make_builder(cfg, 'synthetic_shapes').data_dir}/*-train.array_record-*")[0]


def test_corrupt_records_are_skipped_counted_and_logged(damaged_cfg, caplog):
    _damage_records(_train_file(damaged_cfg), {1: lambda r: b"\xff" * 40, 5: _break_png, 9: lambda r: r[:len(r) // 2]})
    iterator = iter(loader.make_dataset(damaged_cfg, shard=NO_SHARDING))
    with caplog.at_level(logging.WARNING):
        batches = list(iterator)
    assert len(batches) == (42 - 3) // 4  # one epoch of the 39 good records, the last partial batch dropped
    assert loader.skipped_records(iterator.get_state()) == 3
    skipped = [r.getMessage() for r in caplog.records if "skipped" in r.getMessage()]
    assert len(skipped) == 3 and "[1]: unreadable record" in skipped[0] and "undecodable image" in skipped[1]


def test_a_mostly_corrupt_dataset_stops_the_run(damaged_cfg):
    _damage_records(_train_file(damaged_cfg), {i: (lambda r: b"\x00") for i in range(42)})
    damaged_cfg.loader.num_epochs = -1
    with pytest.raises(loader.CorruptDataError, match="rebuild"):
        next(iter(loader.make_dataset(damaged_cfg, shard=NO_SHARDING)))


def test_a_finite_run_over_mostly_corrupt_data_fails_at_its_end(damaged_cfg):
    _damage_records(_train_file(damaged_cfg), {i: (lambda r: b"\x00") for i in range(42)})  # one epoch: < 100 seen
    with pytest.raises(loader.CorruptDataError, match="42 of 42"):
        list(loader.make_dataset(damaged_cfg, shard=NO_SHARDING))


def test_hosts_read_disjoint_shards(tiny_cfg):
    tiny_cfg.mix.weight_2d, tiny_cfg.loader.num_epochs, tiny_cfg.batch_size = 0.0, 1, 1

    def first_views(shard):
        batches = list(loader.make_dataset(tiny_cfg, shard=shard))
        return {b.tobytes() for batch in batches for b in batch["images"][:, 0]}, len(batches)

    host0, count0 = first_views(grain.sharding.ShardOptions(shard_index=0, shard_count=2, drop_remainder=True))
    host1, count1 = first_views(grain.sharding.ShardOptions(shard_index=1, shard_count=2, drop_remainder=True))
    everything, _ = first_views(NO_SHARDING)
    assert count0 == count1 == len(host0) == len(host1) == 21  # 42 records, one epoch, split evenly
    assert not host0 & host1 and host0 | host1 == everything


def test_to_global_places_a_batch_on_the_mesh(tiny_cfg):
    batch = next(iter(loader.make_dataset(tiny_cfg, shard=NO_SHARDING)))
    mesh = jax.sharding.Mesh(np.array(jax.devices()[:1]), ("data",))
    sharding = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("data"))
    arrays = to_global(batch, sharding)
    for key, value in batch.items():
        assert arrays[key].shape == value.shape and arrays[key].sharding == sharding
        np.testing.assert_array_equal(np.asarray(arrays[key]), value)
