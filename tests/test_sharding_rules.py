"""mvrag_jax/sharding.py rules and mesh plumbing (single device; the 8-device behaviour is in test_sharding.py)."""

import types

import pytest
from jax.sharding import PartitionSpec

from mvrag_jax import sharding


def test_make_rules_overrides_known_names_and_rejects_typos():
    rules = dict(sharding.make_rules([(sharding.HEADS, None), (sharding.BATCH, ["data"])]))
    assert rules[sharding.HEADS] is None and rules[sharding.BATCH] == ("data",)
    assert rules[sharding.EMBED] == dict(sharding.DEFAULT_RULES)[sharding.EMBED]
    with pytest.raises(sharding.ShardingRuleError, match="unknown logical axis 'head'"):
        sharding.make_rules([("head", "tensor")])
    with pytest.raises(sharding.ShardingRuleError, match="mesh axis 'model'"):
        sharding.make_rules([(sharding.MLP, "model")])


def test_every_logical_name_has_exactly_one_rule():
    names = [name for name, _ in sharding.DEFAULT_RULES]
    assert len(names) == len(set(names))
    for _, target in sharding.DEFAULT_RULES:
        for axis in (target if isinstance(target, tuple) else (target,)):
            assert axis is None or axis in sharding.MESH_AXES


def test_make_mesh_fills_one_axis_and_explains_bad_sizes():
    mesh = sharding.make_mesh()
    assert mesh.axis_names == sharding.MESH_AXES and mesh.size == 1
    with pytest.raises(sharding.ShardingRuleError, match="needs 4 devices"):
        sharding.make_mesh(data=2, fsdp=2)
    with pytest.raises(sharding.ShardingRuleError, match="at most one mesh axis may be -1"):
        sharding.make_mesh(data=-1, fsdp=-1)


def test_fit_spec_drops_axes_that_do_not_divide_a_dimension():
    mesh = types.SimpleNamespace(shape={"data": 2, "fsdp": 4, "tensor": 2})
    assert sharding._fit_spec(PartitionSpec("fsdp", "tensor"), (32, 6), mesh) == PartitionSpec("fsdp", "tensor")
    assert sharding._fit_spec(PartitionSpec("fsdp", "tensor"), (6, 3), mesh) == PartitionSpec(None, None)
    # A tuple of axes keeps the longest prefix that still divides: 8 over data*fsdp, 4 only over data (2).
    assert sharding._fit_spec(PartitionSpec(("data", "fsdp")), (8,), mesh) == PartitionSpec(("data", "fsdp"))
    assert sharding._fit_spec(PartitionSpec(("data", "fsdp")), (2,), mesh) == PartitionSpec("data")
