"""mvrag_jax/train/multislice.py: the job's slice count against --num_slices, and the mesh's DCN split."""

import dataclasses

import pytest

from configs import train
from mvrag_jax.train import multislice


@dataclasses.dataclass(frozen=True)
class FakeTpu:
    id: int
    slice_index: int


class FakeCpu:
    id = 0


TWO_SLICES = [FakeTpu(i, i // 4) for i in range(8)]


def test_slices_default_to_data_parallel_and_an_explicit_split_is_kept():
    cfg = multislice.with_slices(train.get_config("size=micro"), 2, TWO_SLICES)
    assert (cfg.mesh.dcn_data, cfg.mesh.dcn_fsdp) == (2, 1)
    cfg = multislice.with_slices(train.get_config("size=micro"), None, TWO_SLICES)  # the devices' own count
    assert cfg.mesh.dcn_data == 2
    cfg = train.get_config("size=micro")
    cfg.mesh.dcn_fsdp = 2
    assert multislice.with_slices(cfg, 2, TWO_SLICES).mesh.dcn_data == 1
    cfg = multislice.with_slices(train.get_config("size=micro"), 2, [FakeCpu()])  # CPU: emulated slices
    assert cfg.mesh.dcn_data == 2
    one = multislice.with_slices(train.get_config("size=micro"), None, [FakeCpu()])
    assert (one.mesh.dcn_data, one.mesh.dcn_fsdp) == (1, 1)


def test_a_slice_count_the_job_does_not_have_names_the_queued_resource_fix():
    with pytest.raises(multislice.MultisliceError, match=r"form 2 slice\(s\) \(MEGASCALE_NUM_SLICES=unset\).*"
                                                         r"--node-count 4"):
        multislice.with_slices(train.get_config("size=micro"), 4, TWO_SLICES, env={})
    with pytest.raises(multislice.MultisliceError, match="MEGASCALE_NUM_SLICES=2"):
        multislice.with_slices(train.get_config("size=micro"), 1, TWO_SLICES, env={"MEGASCALE_NUM_SLICES": "2"})
    cfg = train.get_config("size=micro")
    cfg.mesh.dcn_data = 3
    with pytest.raises(multislice.MultisliceError, match="make their product 2"):
        multislice.with_slices(cfg, 2, TWO_SLICES)
    cfg.mesh.dcn_data = 2
    with pytest.raises(multislice.MultisliceError, match="one slice"):
        multislice.with_slices(cfg, 1, [FakeCpu()])


def test_runtime_slice_count_reads_megascale_env():
    assert multislice.runtime_slice_count({"MEGASCALE_NUM_SLICES": "4"}) == 4
    assert multislice.runtime_slice_count({}) is None
