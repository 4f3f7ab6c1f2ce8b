"""What a compiled program needs on its device, as the backend reports it (every benchmark's memory figure)."""

from typing import Any


def compiled_memory(compiled: Any) -> dict[str, int] | None:
    """Bytes the compiled program needs, where the backend reports them."""
    analysis = compiled.memory_analysis()
    if analysis is None:
        return None
    names = ("argument_size_in_bytes", "output_size_in_bytes", "temp_size_in_bytes", "generated_code_size_in_bytes")
    return {name: int(getattr(analysis, name)) for name in names if hasattr(analysis, name)}
