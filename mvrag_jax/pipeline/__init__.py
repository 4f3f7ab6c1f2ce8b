"""MV-RAG generation: `pipeline` (the batched end-to-end `Pipeline`: prior pass, fusion weight, main pass, decode),
`programs` (its compiled stages), `fusion` (the DINOv2 fusion weight), `device_preprocess` (the bit-exact on-device
DINOv2 preprocessing of generated views) and `generate` (the `mvrag generate` job: prompt files, outputs, resume,
host split).

    from mvrag_jax.pipeline import ObjectRequest, Pipeline, SamplingOptions
"""

from mvrag_jax.pipeline.pipeline import ObjectRequest, ObjectResult, Pipeline, PipelineError, SamplingOptions
