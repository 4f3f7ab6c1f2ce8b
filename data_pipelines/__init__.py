"""Training and evaluation data for MV-RAG: tfds builders (ArrayRecord, no TensorFlow) and grain loaders.

    builders: synthetic_shapes (procedural default), mv_renders, class_images, ood_eval
    loader:   make_dataset(cfg) -> batches of fixed shapes, 3D/2D modes mixed deterministically
    protocol: background (per-object grey over the renders' alpha), augment (retrieval simulation), variants
              (semantic variants of renders with the pipeline in 2D mode)
    tools:    python -m data_pipelines.build | .bench | .preview  (--config configs/data.py:size=tiny), .variants
"""
