"""What every model config dataclass shares: reading its block of an experiment ConfigDict, the compute dtypes, and
the sizes that transformers allows as [h, w] pairs but the released models (and this port) keep square."""

from typing import Any, Iterable

COMPUTE_DTYPES = ("float32", "bfloat16")  # activations; params are always float32


def check_compute_dtype(dtype: str, component: str, error: type[Exception] = ValueError) -> None:
    if dtype not in COMPUTE_DTYPES:
        raise error(f"{component} dtype {dtype!r} is not supported; use one of {COMPUTE_DTYPES} "
                    "(e.g. --config.runtime.dtype=bfloat16)")


def config_block(cfg: Any, name: str, fields: Iterable[str], error: type[Exception] = ValueError) -> dict[str, Any]:
    """`cfg.model.<name>` as a dict; a field the config class does not have is an error (a typo must not pass)."""
    block, fields = dict(getattr(cfg.model, name)), tuple(fields)
    unknown = sorted(set(block) - set(fields))
    if unknown:
        raise error(f"cfg.model.{name} has unknown fields {unknown}; known: {', '.join(fields)}")
    return block


def square_size(value: Any, field: str, where: str, error: type[Exception] = ValueError) -> int:
    """An int side from an int or a square [h, w] pair; non-square sizes are not what the released models use."""
    if isinstance(value, (list, tuple)):
        if len(value) != 2 or value[0] != value[1]:
            raise error(f"{where}: {field}={value} is not square; only square sizes are supported")
        value = value[0]
    return int(value)
