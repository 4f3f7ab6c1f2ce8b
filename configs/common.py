"""Shared config pieces: arg parsing for variants and the model/mesh blocks every config carries."""

import ml_collections as mlc

from mvrag_jax.errors import UsageError


def parse_arg(arg: str | None, **defaults) -> mlc.ConfigDict:
    """Parse `key=value,key2=value2` (the part after ':' in `--config=configs/x.py:key=value`) over `defaults`."""
    values = mlc.ConfigDict(defaults)
    for item in filter(None, (arg or "").split(",")):
        key, sep, value = item.partition("=")
        if not sep or key not in values:
            raise UsageError(f"config arg {item!r}: expected key=value with key in {sorted(values.keys())}")
        values[key] = type(defaults[key])(value) if not isinstance(defaults[key], bool) else value.lower() == "true"
    return values


def runtime() -> mlc.ConfigDict:
    """Numerics and compilation: compute dtype, matmul precision, remat policy, attention kernel, compile cache."""
    return mlc.ConfigDict({
        "dtype": "float32",              # activations: float32 | bfloat16 (params are always float32)
        "matmul_precision": "highest",   # highest | high | default; parity needs highest
        "remat": "none",                 # none | full | ordered | dots_saveable: remat per UNet block (models/remat.py)
        "attention": "auto",             # auto | xla | chunked | cudnn (GPU) | pallas_tpu (TPU): attention kernel
        "compile_cache_dir": "~/.cache/mvrag_jax/xla",
    })


def mesh() -> mlc.ConfigDict:
    """(data, fsdp, tensor) mesh sizes; one may be -1 to take the remaining devices. Over several slices (multislice)
    they are the sizes inside one slice and dcn_data x dcn_fsdp split the slices (sharding.make_mesh): dcn_data
    multiplies the data axis (batch over slices), dcn_fsdp the fsdp axis (parameters sharded over slices)."""
    return mlc.ConfigDict({"data": 1, "fsdp": -1, "tensor": 1, "dcn_data": 1, "dcn_fsdp": 1})
