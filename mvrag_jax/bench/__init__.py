"""Benchmarks behind `mvrag bench`: `unet` (UNet forward and forward+backward), `sample` (whole samples through the
pipeline), `train` (the real train step over meshes, `--find_max_batch`), `suite` (`bench all` into one JSON and
`bench compare`), `memory` (a compiled program's memory figures). Compile time is always reported apart."""
