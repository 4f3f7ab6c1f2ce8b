"""What a resume may change: the new config against the one saved with the checkpoint, compared before restoring.

    changes = compare_configs(saved_dict, cfg)         # [(field, saved, new, kind)]
    check_resume(changes, allow=fv.allow_config_change, step=step)

Three kinds of field:
- `shape`: the model and what trains (model.*, train.trainable, train.init, train.reset_ip, train.frozen_dtype).
  The saved state cannot restore into another shape, or it would be another model: always refused.
- `free`: how the run is driven, not what it computes (steps, intervals, mesh, compile and memory settings, where
  data lives, the lock). Never mentioned.
- everything else (batch, seeds, data, optimizer, dropout, numerics): the run would silently differ from the one
  that was checkpointed, and the saved data position would mean other examples: refused unless `--allow-config-change`
  (`mvrag train`), then logged field by field.

A field only one side has (a config written before the field existed) is not a change.
"""

from typing import Any

import ml_collections as mlc
from absl import logging

from mvrag_jax.errors import MvragError

SHAPE_PREFIXES = ("model.", "train.trainable", "train.init", "train.reset_ip", "train.frozen_dtype")
FREE_PREFIXES = ("train.steps", "train.log_every", "train.ckpt_every", "train.keep_checkpoints", "train.sample_",
                 "train.compile_effort", "train.microbatches", "train.encode_chunk_rows", "train.encoders",
                 "train.frozen_sharding", "train.lock_", "mesh.", "data.data_dir", "data.loader.num_workers",
                 "data.loader.prefetch", "data.loader.read_", "data.loader.worker_buffer_size",
                 "data.loader.max_skip_fraction", "data.tokenizer_dir", "runtime.remat", "runtime.attention",
                 "runtime.compile_cache_dir")


class ConfigChangedError(MvragError):
    """A resume's config differs from its checkpoint's in a way that cannot, or may not silently, resume."""


def _flatten(tree: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(tree, (dict, mlc.ConfigDict)):
        out = {}
        for key in tree.keys():
            out.update(_flatten(tree[key], f"{prefix}{key}."))
        return out
    return {prefix[:-1]: list(tree) if isinstance(tree, tuple) else tree}


def _kind(field: str) -> str:
    if field.startswith(SHAPE_PREFIXES):
        return "shape"
    return "free" if field.startswith(FREE_PREFIXES) else "run"


def compare_configs(saved: dict, cfg: mlc.ConfigDict) -> list[tuple[str, Any, Any, str]]:
    """(field, saved value, new value, kind) for every field both configs have with different values."""
    import json
    old, new = _flatten(saved), _flatten(json.loads(cfg.to_json()))
    return [(f, old[f], new[f], _kind(f)) for f in sorted(old.keys() & new.keys()) if old[f] != new[f]]


def check_resume(changes: list[tuple[str, Any, Any, str]], *, allow: bool, step: int, workdir: Any) -> None:
    """Raise ConfigChangedError for a shape change, or for a run change without `allow`; log allowed ones."""
    describe = lambda items: "; ".join(f"{f}: {o!r} -> {n!r}" for f, o, n, _ in items[:8]) + (
        f" (+{len(items) - 8} more)" if len(items) > 8 else "")
    shape = [c for c in changes if c[3] == "shape"]
    run = [c for c in changes if c[3] == "run"]
    if shape:
        raise ConfigChangedError(
            f"cannot resume {workdir} at step {step}: the model or what trains changed ({describe(shape)}); resume "
            "with the saved values, or start a new --workdir (--config.train.init may take an export of this one)")
    if run and not allow:
        raise ConfigChangedError(
            f"resuming {workdir} at step {step} with another config ({describe(run)}); resume with the saved values, "
            "or pass --allow-config-change to go on with the new ones from this step")
    for field, old, new, _ in run:
        logging.warning("resume at step %d: %s changed from %r to %r (--allow-config-change)", step, field, old, new)
