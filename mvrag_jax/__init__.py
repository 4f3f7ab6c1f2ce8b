"""mvrag-jax: MV-RAG (retrieval-augmented multiview diffusion) in JAX/Flax.

Packages, from the bottom floor up; each imports only from its own floor's modules and those below
(tests/test_layout.py checks it):
    errors                       MvragError, the base of every error a user fixes from its one-line message
    sharding, inputs, cluster    the logical-axis vocabulary; what the models take (release, text, images, camera);
                                 where a process runs (platforms, multi-host init)
    models                       pure flax.linen modules, param paths = release keys
    convert, diffusion           official layouts <-> params <-> orbax; DDIM scheduler and compiled loops
    retrieval                    folder, BM25 and dense retrievers
    pipeline                     batched end-to-end generation and the `mvrag generate` job
    train, eval, verify          trainer, evaluation, parity harness
    bench, demo                  benchmarks; the demo's pieces
    cli                          `mvrag`: parse flags, call one library function
"""

import importlib

# Top-level modules before the packages above existed: `from mvrag_jax import images, text` keeps working for code
# written against those names. New code imports from the packages.
_MOVED_MODULES = {
    "camera": "mvrag_jax.inputs.camera",
    "images": "mvrag_jax.inputs.images",
    "release": "mvrag_jax.inputs.release",
    "text": "mvrag_jax.inputs.text",
    "fusion": "mvrag_jax.pipeline.fusion",
    "generate": "mvrag_jax.pipeline.generate",
}


def __getattr__(name: str):
    if name in _MOVED_MODULES:
        return importlib.import_module(_MOVED_MODULES[name])
    raise AttributeError(f"module 'mvrag_jax' has no attribute {name!r}")
