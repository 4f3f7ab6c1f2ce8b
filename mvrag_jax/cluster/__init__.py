"""Where a process runs and whom it runs with: `platforms` (which JAX backends a command starts, libtpu without a
TPU), `distributed` (joining a multi-process job with a deadline)."""
