"""grain loaders: per-mode pipelines, deterministic 3D/2D mixing, per-host sharding, workers, prefetch, resumable state.

Per mode:  tfds ArrayRecord source -> host shard (disjoint) -> shuffle (new order every epoch) -> repeat
           -> transform with a per-record seed (cfg.seed, mode, host shard, position) -> drop skipped records
Then:      mix.per="batch": batch each mode -> [float images] -> its own worker processes; alternate batches by
           weight in this process.  mix.per="example": mix examples by weight -> batch -> [float] -> workers.
           Last, a thread prefetches batches in the consuming process.

    ds = make_dataset(get_config("size=tiny"))   # grain.IterDataset of batches (dicts of numpy arrays)
    it = iter(ds); batch = next(it)
    state = it.get_state()                       # save it with the checkpoint
    it = iter(make_dataset(cfg)); it.set_state(state)  # continues with exactly the batches an unbroken run sees
    skipped_records(it.get_state())              # corrupt records skipped so far, over all workers

Every choice is a function of the config and the iterator position, so the batch sequence is reproducible; changing
`loader.num_workers` changes the order in which batches arrive (each worker reads a slice), not their determinism.
"""

import dataclasses
from typing import Any, Callable

import grain
import ml_collections as mlc
import numpy as np
from absl import flags, logging
from google.protobuf import message as protobuf_message

from data_pipelines import build, transforms
from data_pipelines.transforms import MODE_2D, MODE_3D, RecordError, Skipped
from mvrag_jax.errors import MvragError, UsageError

SKIPPED_KEY = "corrupt_records_skipped"
# What a tfds data source raises for a record whose bytes do not parse.
SOURCE_ERRORS = (protobuf_message.DecodeError, KeyError, ValueError, TypeError)
_MIN_SEEN_BEFORE_RATIO_CHECK = 100
_LOG_EACH_FIRST, _LOG_EVERY = 20, 100


class CorruptDataError(MvragError, RuntimeError):
    pass


class EmptyDatasetError(MvragError, ValueError):
    pass


class TolerantSource:
    """A tfds data source whose unreadable records come back as `Skipped` (instead of raising), with `_index`
    (the record's position in the split) added to every good record."""

    def __init__(self, source, name: str):
        self._source, self._name = source, name

    def __len__(self) -> int:
        return len(self._source)

    def __getitem__(self, index: int):
        try:
            record = dict(self._source[index])
        except SOURCE_ERRORS as e:
            return Skipped(f"{self._name}[{index}]", f"unreadable record ({type(e).__name__}: {e})")
        record["_index"] = index
        return record


@dataclasses.dataclass(frozen=True)
class SeededTransform:
    """`transform(record, rng)` with rng seeded by (seed, mode, shard, position); RecordError -> Skipped."""
    transform: Callable[[dict, np.random.Generator], dict]
    seed: int
    mode: int
    shard_index: int
    name: str

    def __call__(self, index: int, record):
        if isinstance(record, Skipped):
            return record
        rng = np.random.default_rng([self.seed, self.mode, self.shard_index, index])
        try:
            return self.transform(record, rng)
        except RecordError as e:
            return Skipped(f"{self.name}[{record.get('_index')}]", str(e))


class _SkipCorruptIterator(grain.DatasetIterator):
    def __init__(self, parent: grain.DatasetIterator, name: str, max_fraction: float):
        super().__init__(parent)
        self._name, self._max_fraction = name, max_fraction
        self._seen = self._skipped = 0

    def __next__(self):
        while True:
            try:
                element = next(self._parent)
            except StopIteration:
                # A finite run over fewer than 100 records must not end silently with (almost) nothing read.
                if self._seen:
                    self._check_fraction()
                raise
            self._seen += 1
            if not isinstance(element, Skipped):
                return element
            self._skipped += 1
            if self._skipped <= _LOG_EACH_FIRST or self._skipped % _LOG_EVERY == 0:  # a damaged shard must not flood
                logging.warning("%s: skipped %s: %s (%d of %d records so far)", self._name, element.record,
                                element.reason, self._skipped, self._seen)
            if self._seen >= _MIN_SEEN_BEFORE_RATIO_CHECK:
                self._check_fraction()

    def _check_fraction(self) -> None:
        if self._skipped > self._max_fraction * self._seen:
            raise CorruptDataError(
                f"{self._name}: {self._skipped} of {self._seen} records were unreadable (more than "
                f"loader.max_skip_fraction={self._max_fraction}); the dataset is damaged or was built for another "
                "config: rebuild it with python -m data_pipelines.build")

    def get_state(self) -> dict[str, Any]:
        return {"parent": self._parent.get_state(), SKIPPED_KEY: self._skipped, "seen": self._seen}

    def set_state(self, state: dict[str, Any]) -> None:
        self._parent.set_state(state["parent"])
        self._skipped, self._seen = state[SKIPPED_KEY], state["seen"]


class SkipCorruptIterDataset(grain.IterDataset):
    """Drops `Skipped` placeholders, logging each and counting them in the iterator state (see skipped_records)."""

    def __init__(self, parent: grain.IterDataset, name: str, max_fraction: float):
        super().__init__(parent)
        self._name, self._max_fraction = name, max_fraction

    def __iter__(self) -> grain.DatasetIterator:
        return _SkipCorruptIterator(self._parent.__iter__(), self._name, self._max_fraction)


def skipped_records(state: Any) -> int:
    """Corrupt records skipped so far, summed over modes and worker processes, from an iterator state."""
    if isinstance(state, dict):
        return sum(v if k == SKIPPED_KEY else skipped_records(v) for k, v in state.items())
    if isinstance(state, (list, tuple)):
        return sum(skipped_records(v) for v in state)
    return 0


def class_ranges(builder, split: str) -> np.ndarray:
    """[C, 2] record range [start, end) per label of a class dataset (stored grouped by label, see records.py)."""
    counts = builder.info.metadata.get("class_counts", {}).get(split)
    if counts is None:
        raise build.DatasetNotBuiltError(f"{builder.data_dir} has no class_counts for split {split!r} in its "
                                         "metadata.json; rebuild it with python -m data_pipelines.build")
    ends = np.cumsum(counts)
    return np.stack([ends - np.asarray(counts), ends], axis=1).astype(np.int64)


def _shard(ds: grain.MapDataset, shard: grain.sharding.ShardOptions) -> grain.MapDataset:
    """Disjoint per-host slice; with drop_remainder every host gets the same count, so hosts stay in step."""
    if shard.shard_count <= 1:
        return ds
    if shard.drop_remainder:
        ds = ds[:len(ds) - len(ds) % shard.shard_count]
    return ds[shard.shard_index::shard.shard_count]


def make_mode_dataset(cfg: mlc.ConfigDict, mode: int, shard: grain.sharding.ShardOptions,
                      tokenizer: transforms.Tokenizer, provenance: bool = False) -> grain.IterDataset:
    """Unbatched examples of one mode for this host (provenance: see make_dataset)."""
    mode_key = "mode_3d" if mode == MODE_3D else "mode_2d"
    dataset, kind = build.mode_dataset(cfg, mode_key)
    split = cfg[mode_key].split
    builder = build.prepare(cfg, dataset, kind)
    name = f"{dataset}/{kind}:{split}" if dataset == "synthetic_shapes" else f"{dataset}:{split}"
    source = TolerantSource(builder.as_data_source(split=split), name)
    if mode == MODE_3D:
        transform = transforms.MultiviewTransform(cfg, tokenizer, provenance)
    else:
        transform = transforms.ClassTransform(cfg, tokenizer, source, class_ranges(builder, split), provenance)
    ds = _shard(grain.MapDataset.source(source), shard)
    if len(ds) == 0:
        raise EmptyDatasetError(f"{name} has {len(source)} records, none left for host {shard.shard_index} of "
                                f"{shard.shard_count}; build a larger dataset or run on fewer hosts")
    if cfg.loader.shuffle:
        ds = ds.shuffle(seed=int(np.random.SeedSequence([cfg.seed, mode]).generate_state(1)[0]))
    ds = ds.repeat(None if cfg.loader.num_epochs < 0 else cfg.loader.num_epochs)
    ds = ds.map_with_index(SeededTransform(transform, cfg.seed, mode, shard.shard_index, name))
    ds = ds.to_iter_dataset(grain.ReadOptions(num_threads=cfg.loader.read_threads,
                                              prefetch_buffer_size=cfg.loader.read_buffer_size))
    return SkipCorruptIterDataset(ds, name, cfg.loader.max_skip_fraction)


def _float_images(batch: dict) -> dict:
    return {**batch, "images": batch["images"].astype(np.float32) / 127.5 - 1.0}


def _finish(ds: grain.IterDataset, cfg: mlc.ConfigDict) -> grain.IterDataset:
    """Image dtype, then worker processes for this stream of batches."""
    if cfg.images_dtype == "float32":
        ds = ds.map(_float_images)
    if cfg.loader.num_workers > 0:
        if not flags.FLAGS.is_parsed():  # grain reads its absl flags when it starts workers
            raise RuntimeError("loader.num_workers > 0 needs parsed absl flags: run under absl.app.run, or call "
                               "absl.flags.FLAGS.mark_as_parsed() at your entry point (or set loader.num_workers=0)")
        ds = ds.mp_prefetch(grain.MultiprocessingOptions(num_workers=cfg.loader.num_workers,
                                                         per_worker_buffer_size=cfg.loader.worker_buffer_size))
    return ds


def make_dataset(cfg: mlc.ConfigDict, shard: grain.sharding.ShardOptions | None = None,
                 provenance: bool = False) -> grain.IterDataset:
    """Batches for this host (see configs/data.py for the layout). `shard` defaults to one shard per JAX process.
    provenance=True adds `retrieved_ops` [B, k] int32 (data_pipelines/augment.py flags: which ops, or a variant, or
    same-class images made each retrieval) for previews; the other fields are exactly the training batches'.

    With mix.per="batch" each mode has its own worker processes and batches are mixed in this process, so the
    mode sequence is exactly the weights' pattern (3D, 2D, 3D, ... for 1:1) whatever the number of workers.
    """
    if cfg.mix.per not in ("batch", "example"):
        raise UsageError(f"--config.mix.per={cfg.mix.per!r}; choose batch or example")
    if cfg.images_dtype not in ("uint8", "float32"):
        raise UsageError(f"--config.images_dtype={cfg.images_dtype!r}; choose uint8 or float32")
    weights = [(mode, float(w)) for mode, w in ((MODE_3D, cfg.mix.weight_3d), (MODE_2D, cfg.mix.weight_2d)) if w > 0]
    if not weights:
        raise UsageError("--config.mix.weight_3d and weight_2d are both 0; give at least one mode a positive weight")
    if shard is None:
        shard = grain.sharding.ShardByJaxProcess(drop_remainder=True)
    tokenizer = transforms.Tokenizer(cfg.tokenizer_dir, cfg.max_length)
    modes = [make_mode_dataset(cfg, mode, shard, tokenizer, provenance) for mode, _ in weights]
    # A list (3D first), not a dict: grain would order dict keys alphabetically.
    if cfg.mix.per == "batch":
        streams = [_finish(ds.batch(cfg.batch_size, drop_remainder=True), cfg) for ds in modes]
        ds = grain.IterDataset.mix(streams, [w for _, w in weights]) if len(streams) > 1 else streams[0]
    else:
        ds = grain.IterDataset.mix(modes, [w for _, w in weights]) if len(modes) > 1 else modes[0]
        ds = _finish(ds.batch(cfg.batch_size, drop_remainder=True), cfg)
    if cfg.loader.prefetch > 0:
        ds = grain.experimental.ThreadPrefetchIterDataset(ds, prefetch_buffer_size=cfg.loader.prefetch)
    return ds
