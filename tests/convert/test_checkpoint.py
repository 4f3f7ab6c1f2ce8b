import dataclasses

import numpy as np
import pytest

from mvrag_jax.convert.checkpoint import (CheckpointError, atomic_directory, config_from_dict, config_to_dict,
                                          load_checkpoint, save_checkpoint)


@dataclasses.dataclass(frozen=True)
class ToyConfig:
    width: int
    mult: tuple[int, ...]


def test_atomic_directory_leaves_nothing_on_failure(tmp_path):
    target = tmp_path / "out"
    with pytest.raises(RuntimeError):
        with atomic_directory(target) as tmp:
            (tmp / "half.bin").write_bytes(b"x")
            raise RuntimeError("interrupted")
    assert list(tmp_path.iterdir()) == []


def test_atomic_directory_refuses_existing_target_unless_overwrite(tmp_path):
    target = tmp_path / "out"
    target.mkdir()
    (target / "old").write_text("old")
    with pytest.raises(CheckpointError, match="--overwrite"):
        with atomic_directory(target):
            pass
    with atomic_directory(target, overwrite=True) as tmp:
        (tmp / "new").write_text("new")
    assert sorted(p.name for p in target.iterdir()) == ["new"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]  # no temp or backup folders left


def test_config_round_trip_restores_tuples_and_rejects_unknown_fields():
    config = ToyConfig(8, (1, 2))
    assert config_from_dict(ToyConfig, config_to_dict(config) | {"mult": [1, 2]}) == config
    with pytest.raises(CheckpointError, match="no fields"):
        config_from_dict(ToyConfig, {"width": 8, "mult": [1], "depth": 3})


def test_save_and_load(tmp_path):
    params = {"toy": {"dense": {"kernel": np.arange(6, dtype=np.float32).reshape(2, 3)}}}
    save_checkpoint(tmp_path / "ckpt", {"toy": ToyConfig(4, (1,))}, params)
    configs, loaded = load_checkpoint(tmp_path / "ckpt", {"toy": ToyConfig})
    assert configs == {"toy": ToyConfig(4, (1,))}
    np.testing.assert_array_equal(loaded["toy"]["dense"]["kernel"], params["toy"]["dense"]["kernel"])


def test_load_errors(tmp_path):
    with pytest.raises(CheckpointError, match="not a directory"):
        load_checkpoint(tmp_path / "nope", {})
    (tmp_path / "empty").mkdir()
    with pytest.raises(CheckpointError, match="mvrag convert"):
        load_checkpoint(tmp_path / "empty", {})
