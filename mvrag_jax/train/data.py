"""The one place host batches become global device arrays (`jax.make_array_from_process_local_data`)."""

import jax
import numpy as np


def to_global(batch: dict[str, np.ndarray], sharding: jax.sharding.Sharding) -> dict[str, jax.Array]:
    """Each host's batch [b_local, ...] -> global arrays [b_local * num_hosts, ...], split along the batch axis.

    `sharding` is the data sharding, e.g. NamedSharding(mesh, PartitionSpec(("data", "fsdp"))): a one-entry spec
    shards axis 0 of every field and replicates the rest, so one sharding serves all fields of the batch.
    """
    out = {}
    for name, value in batch.items():
        try:
            out[name] = jax.make_array_from_process_local_data(sharding, value)
        except ValueError as e:
            raise ValueError(f"batch field {name!r} of shape {value.shape} does not split over {sharding}: make the "
                             "per-host batch size (data config batch_size) a multiple of this host's devices along "
                             f"the batch mesh axes (data*fsdp) ({e})") from e
    return out
