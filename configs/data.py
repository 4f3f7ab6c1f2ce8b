"""Training data: datasets per mode, image sizes, views, retrievals, augmentation, 3D/2D mixing and loader workers.

    python -m data_pipelines.build   --config configs/data.py:size=tiny --config.data_dir /tmp/mvrag_data
    python -m data_pipelines.preview --config configs/data.py:size=tiny --config.data_dir /tmp/mvrag_data \
        --out /tmp/mvrag_preview.png
    python -m data_pipelines.bench   --config configs/data.py:size=tiny --config.data_dir /tmp/mvrag_data
    python -m data_pipelines.build   --config configs/data.py:source=real --config.mv_renders.manual_dir /renders \
        --config.class_images.manual_dir /imagenet21k_516
    mvrag data variants --ckpt CKPT --renders /renders --per_object 2   # semantic variants into /renders/*/variants

Variants (arg string):
- `size=paper` (default): 256x256 views, F=4, k=4 retrieved at 224 (CLIP ViT-H/14 input), 1:1 3D/2D mixing, the
  paper's C.1 protocol (random grey backgrounds, orbits at -5..30 degrees, augmented retrievals and variants).
- `size=tiny`: 32x32 views, F=4, k=2 retrieved at 32 (the tiny release's CLIP), a small synthetic set for tests,
  on a fixed grey 127 (`--config.background=random` for the paper's).
- `source=synthetic` (default): both modes read the procedural `synthetic_shapes` dataset (built on first use).
- `source=real`: 3D mode reads `mv_renders`, 2D mode `class_images`, both from their `manual_dir`.

Batch layout (numpy, per host; B = batch_size, F = num_views, k = num_retrieved):
    images      [B, F, H, W, 3]  uint8 0..255, or float32 in [-1, 1] when images_dtype="float32"
    view_mask   [B, F] int32     1 for real views; 2D mode fills view 0 only (other views are zeros)
    camera      [B, F, 16] f32   get_camera poses; zeros in 2D mode
    camera_mask [B] int32        1 in 3D mode, 0 in 2D mode
    retrieved   [B, k, R, R, 3]  uint8 (CLIP preprocessing happens on device, elsewhere)
    (previews only, make_dataset(provenance=True): retrieved_ops [B, k] int32, data_pipelines/augment.py flags)
    input_ids   [B, 77] int32    CLIP token ids of the caption
    mode        [B] int32        0 = 3D, 1 = 2D
"""

import ml_collections as mlc

from configs import common
from mvrag_jax.errors import UsageError


def get_config(arg: str | None = None) -> mlc.ConfigDict:
    args = common.parse_arg(arg, size="paper", source="synthetic")
    c = mlc.ConfigDict()
    c.data_dir = "~/tensorflow_datasets/mvrag"
    # CLIP tokenizer folder (a release's tokenizer/). "" = tests/reference/tiny_release/tokenizer under the repo root,
    # whose tiny vocabulary only suits the tiny text encoder: real runs set <release>/tokenizer.
    c.tokenizer_dir = ""
    c.seed = 0
    c.batch_size = 8  # per host
    c.image_size = 256
    c.num_views = 4
    c.num_retrieved = 4
    c.retrieved_size = 224
    c.images_dtype = "uint8"  # uint8 | float32 ([-1, 1], what the VAE encoder takes)
    # Background of the 3D renders (their alpha is composited in the loader, data_pipelines/background.py).
    # "random" (paper C.1: "empty background replaced by a random grey"): a grey level drawn
    # uniformly from background_range per object; every target view of an object shares it, each simulated
    # retrieval draws its own. The paper gives no range: [64, 192] (ours) keeps the grey clearly away from black
    # and white, so dark and white objects keep their outline. "fixed": background_level everywhere
    # (reproducible demos and tests). 2D class images and OOD-eval references with alpha always use background_level.
    c.background = "random"
    c.background_range = (64, 192)
    c.background_level = 127
    c.max_length = 77

    # Mixing: weights are relative; 1:1 alternates modes. per="batch": every batch holds one mode (the paper
    # alternates modes step by step); per="example": modes interleave inside a batch (masks tell them apart).
    c.mix = mlc.ConfigDict({"weight_3d": 1.0, "weight_2d": 1.0, "per": "batch"})

    c.mode_3d = mlc.ConfigDict({
        "dataset": "synthetic_shapes",   # synthetic_shapes | mv_renders
        "split": "train",
        "caption_suffix": ", 3d asset",
        # Target orbits: 4 orthogonal views at one elevation in this range (paper C.1: [-5, 30] degrees).
        # synthetic_shapes renders its orbits (and extra views) from it; mv_renders keeps only the orbits inside it.
        "elevation_range": (-5.0, 30.0),
        "retrieval_sources": (2, 3),     # the k retrieved images come from 2-3 extra renders of the object (C.1)
        # Simulated retrieval (C.1 lists perspective distortion, rotation, resized crop, colour jitter): each op
        # applies with its probability, independently per retrieved image. The paper gives no probabilities: 1.0
        # (ours) = every op on every image, the heaviest mix.
        # The preview (`mvrag data preview`) labels each retrieval with the ops that made it.
        "augment": mlc.ConfigDict({
            "perspective_prob": 1.0,
            "perspective": 0.2,          # max corner shift as a fraction of the side
            "rotation_prob": 1.0,
            "rotation_deg": 20.0,        # max angle either way
            "crop_prob": 1.0,            # else the whole (warped) render is resized
            "crop_scale": (0.5, 1.0),    # area fraction of the random resized crop
            "crop_ratio": (0.75, 1.3333),
            "jitter_prob": 1.0,
            "brightness": 0.25, "contrast": 0.25, "saturation": 0.25, "hue": 0.02,
        }),
        # Semantic variants (C.1: images from an image-variation model): each retrieved image is, with this
        # probability, one of the object's precomputed variants (mv_renders `variants/` folder, made by
        # `mvrag data variants`) instead of an augmented render; objects without variants (synthetic_shapes, or
        # renders before the command ran) always use renders. The paper gives no rate: 0.25 (ours) makes one of the
        # four retrievals a variant on average; 0.0 turns variants off.
        "variant_prob": 0.25,
    })
    c.mode_2d = mlc.ConfigDict({
        "dataset": "synthetic_shapes",   # synthetic_shapes | class_images
        "split": "train",
        "caption_template": "a photo of {article} {name}",  # no ", 3d asset": 2D mode is not 3D
        "crop_scale": (0.6, 1.0),        # light random resized crop of the same-class retrievals
    })

    c.synthetic = mlc.ConfigDict({
        "shapes": ("cube", "sphere", "cylinder", "cone", "torus", "pyramid", "wedge"),
        "colours": ("red", "green", "blue", "yellow", "orange", "purple", "white", "cyan"),
        "train_per_class": 20, "validation_per_class": 2,
        "extra_views": 3,                # per object, beside the orbit (at random azimuths, mode_3d.elevation_range)
        "scale_range": (0.4, 0.55),
        "fov_deg": 50.0,
        "supersample": 2,
        "seed": 0,
    })
    c.mv_renders = mlc.ConfigDict({"manual_dir": "", "min_extra_views": 1})
    c.class_images = mlc.ConfigDict({"manual_dir": "", "store_size": 256, "min_images_per_class": 2})
    c.ood_eval = mlc.ConfigDict({"manual_dir": "", "expected_prompts": 196})

    c.loader = mlc.ConfigDict({
        "num_workers": 4,           # grain worker processes per batch stream (per mode when mix.per="batch"); 0: none,
                                    # fastest on a 2-core machine (see data_pipelines/bench.py)
        "worker_buffer_size": 2,    # batches each worker keeps ready
        "read_threads": 2,          # threads per worker that read and transform records
        "read_buffer_size": 16,
        "prefetch": 2,              # batches prefetched by a thread in the consuming process (0: off)
        "num_epochs": -1,           # -1: repeat forever (reshuffled every epoch)
        "shuffle": True,
        "max_skip_fraction": 0.5,   # more unreadable records than this (after 100 records, or at the end of a
                                    # finite run) stops the run: the data is broken
    })

    if args.size == "tiny":
        c.update(batch_size=4, image_size=32, num_retrieved=2, retrieved_size=32)
        # A fixed grey: the demo's colour scorer (mvrag_jax/demo/colour.py) and tests compare against 127;
        # --config.background=random gives the paper's protocol at this size too.
        c.background = "fixed"
        c.synthetic.update(colours=("red", "green", "blue"), train_per_class=2, validation_per_class=1,
                           extra_views=2, supersample=1)
        c.class_images.store_size = 64
        c.loader.update(num_workers=0, read_threads=1, read_buffer_size=4, prefetch=0)
    elif args.size != "paper":
        raise UsageError(f"configs/data.py: size={args.size!r}; choose paper or tiny")
    if args.source == "real":
        c.mode_3d.dataset, c.mode_2d.dataset = "mv_renders", "class_images"
    elif args.source != "synthetic":
        raise UsageError(f"configs/data.py: source={args.source!r}; choose synthetic or real")
    return c
