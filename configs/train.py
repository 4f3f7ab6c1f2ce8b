"""MV-RAG training: model (configs/tiny.py or mvrag_sd21.py) + data (configs/data.py) + a `train` block.

    mvrag train --config configs/train.py:size=tiny --workdir /tmp/mvrag_train_tiny \
        --config.data.data_dir /tmp/mvrag_data      # datasets default to WORKDIR/data
    mvrag train --config configs/train.py:size=full --workdir gs://bucket/run \
        --config.train.init /ckpt/mvrag --config.data.tokenizer_dir /release/tokenizer \
        --config.mesh.data=-1 --config.mesh.fsdp=8

    # from Python (what the train loop builds on):
    cfg = get_config("size=tiny")
    mesh = make_mesh(cfg); trainer = make_trainer(cfg, mesh)        # mvrag_jax.train.trainer
    state = trainer.init(jax.random.key(cfg.train.seed))
    state, metrics = trainer.step(state, to_global(batch, trainer.batch_sharding), jax.random.key(cfg.train.seed))

Variants (arg string):
- `size=full` (default): the released SD2.1 multiview UNet + ViT-H/14 at the paper's data sizes, bf16 compute with
  fp32 master params of what trains and bf16 frozen weights, ordered full remat per UNet block, the frozen encoders
  as their own program in pieces of 4 rows per device, init from a converted checkpoint (`mvrag convert` output),
  which must be set with --config.train.init. (`mvrag plan` figures for these settings: README, "Plans".)
- `size=paper`: the paper's run (appendix C.2) on real data: `size=full` with AdamW at 5e-6, global batch 24, 11,000
  steps, 2D and 3D modes alternating batch by batch (1:1), ", 3d asset" on 3D captions, 3D renders from `mv_renders`
  and 2D class sets from `class_images` (the 516-class ImageNet-21k layout), OpenCLIP ViT-H/14 frozen, trainable =
  resampler + every to_k_ip/to_v_ip, init from the `mvrag convert --mvdream A --imagedream B --release R` checkpoint
  (--config.train.init). README "Reproducing the paper" has the whole sequence of commands.
- `size=medium`: configs/tiny.py:size=medium (full depth, 1/4 width) on tiny data: a CPU-sized benchmark.
- `size=tiny`: configs/tiny.py with tiny data (32 px, k=2): tests and the laptop demo. fp32, random init, whole-UNet
  training (`trainable=unet`), since random weights have nothing to fine-tune from.
- `size=demo`: tiny, with the demo's pooling VAE (mvrag_jax/demo/pixel_vae.py: decoded colours are learned colours)
  and a learning rate for minutes of training from random weights; `make demo` runs it on 8 fake CPU devices
  (data=2, fsdp=4) from the checkpoint `python -m mvrag_jax.demo.base` writes (--config.train.init).
- `size=micro`: tiny, shrunk to a one-level UNet and a one-block VAE on 16 px views: the smallest consistent model,
  for tests of the training machinery (compiles in a fraction of tiny's time).

Samples: every `train.sample_every` steps, grids of `train.sample_count` fixed validation objects in WORKDIR/samples
(mvrag_jax/train/samples.py; `train.sample_steps` DDIM steps, few for the small sizes; the demo samples none).

Numerics (compute dtype, matmul precision, remat policy) live in `runtime` (configs/common.py), as for every model
config: params and optimizer state are always float32 ("master"), activations run in runtime.dtype.
"""

import ml_collections as mlc

from configs import common, data, mvrag_sd21, tiny
from mvrag_jax.errors import UsageError


def train_block() -> mlc.ConfigDict:
    return mlc.ConfigDict({
        "batch_size": 64,            # GLOBAL objects per step (each F views, or one target view in 2D mode)
        # Gradient accumulation: the UNet runs over the step's batch in this many sequential pieces (each device's
        # objects must split evenly) and one optimizer update follows; the same loss and gradient, ~1/N of the
        # activation memory. For global batches whose activations do not fit at once.
        "microbatches": 1,
        # XLA's exec_time_optimization_effort for the step's programs (-1..1, 0 = XLA's default). On TPU -1 skips
        # the latency-hiding schedule and the async collective fusions that overlap the fsdp weight all-gathers with
        # compute: full size on v5e:2x4 compiles ~3-10x faster with ~half the temporaries, but the gathers may run
        # exposed (README "Memory and compile settings" has the figures and the bound).
        "compile_effort": 0.0,
        "steps": 100_000,
        "seed": 0,
        # What trains (mvrag_jax/train/trainable.py): "ip" = resampler + every to_k_ip/to_v_ip (the paper);
        # "unet" = the whole UNet + resampler (MVDream-style base training).
        "trainable": "ip",
        # Where weights come from: a converted checkpoint folder (`mvrag convert --out`), "random" (host-filled
        # random weights, tests/demo) or "base" (random frozen weights, image branch initialised as from a base
        # model). A checkpoint without to_k_ip/to_v_ip or resampler (a base MVDream) gets the same base init.
        "init": "random",
        "reset_ip": False,           # True: re-initialise the image branch even if the checkpoint has one
        # Storage dtype of the frozen weights (float32 | bfloat16). Layers compute in runtime.dtype, so with bf16
        # compute a bf16 copy changes nothing but the norm/bias values' rounding and halves their memory. Export
        # always takes frozen weights from the init checkpoint.
        "frozen_dtype": "float32",
        # Frozen encoders (VAE, CLIP text and vision) inside the step's XLA program ("in_step") or as their own
        # program before it ("separate": same maths; the update program holds only UNet + resampler, compiles
        # faster and its temporaries never hold encoder activations). mvrag plan reports both programs.
        # Where the frozen weights live: "rules" (sharded by the logical rules, fsdp) or "replicate_unet" (the
        # frozen UNet replicated: no weight all-gathers, a faster compile, +1.6 GiB per chip at full size in bf16).
        "frozen_sharding": "rules",
        "encoders": "in_step",
        # VAE and CLIP-vision rows per device encoded at a time (0 = all at once): bounds the encoders' activations
        # (the VAE's 256x256x128 feature maps dominate a step's temporaries) without changing any result.
        "encode_chunk_rows": 0,
        "optimizer": mlc.ConfigDict({
            "learning_rate": 5e-6,   # paper default (AdamW)
            "b1": 0.9, "b2": 0.999, "eps": 1e-8,
            "weight_decay": 0.01,
            "schedule": "constant",  # constant | cosine (decays to end_factor * lr at train.steps)
            "warmup_steps": 100,
            "end_factor": 0.0,
            "grad_clip_norm": 1.0,   # global-norm clipping of the trainable grads; <= 0: off
        }),
        # Classifier-free guidance dropout, per object, exclusive events (IP-Adapter's scheme): text only -> empty
        # prompt; image only -> zero (normalised) retrieved pixels, the pipeline's negative; both.
        "cfg_drop_text": 0.05,
        "cfg_drop_image": 0.05,
        "cfg_drop_both": 0.05,
        # l of the paper's training fusion f = l * f_txt + 1 * f_ret in every decoupled cross-attention (§3.3; the
        # retrieval term always at weight 1; inference is unchanged: s * f_txt + (1.5 - s) * f_ret, the official
        # mv_unet.py). The paper gives no number and says small l eases the adaptation of the new retrieval branch;
        # 0.5 is where its l' = l + 1 and the official constant 1.5 coincide, so training at 0.5 computes exactly
        # what inference computes at fusion weight s = 0.5. (Replaces train.ip_scale, which trained 1 * txt + 0.5 *
        # ret: text dominant and the retrieval branch at half its inference weight.)
        "text_weight": 0.5,
        # Exponential moving average of the trainable weights (mvrag_jax/train/ema.py; diffusers' EMAModel warm-up,
        # decay min(ema_decay, (1 + n) / (10 + n)) at update n): 0 = off. Kept in the train state and checkpoint,
        # used for the sample grids, written by `mvrag export --ema`. Off for the small sizes; size=full sets it.
        "ema_decay": 0.0,
        # DDPM noise schedule when the init checkpoint carries no scheduler/scheduler_config.json (SD2.1 values).
        "scheduler": mlc.ConfigDict({"num_train_timesteps": 1000, "beta_start": 0.00085, "beta_end": 0.012,
                                     "beta_schedule": "scaled_linear"}),
        # Intervals (steps) for the loop (mvrag_jax/train/loop.py).
        "log_every": 50,
        "ckpt_every": 2000,
        "sample_every": 5000,        # 0: no samples. Grids in WORKDIR/samples (mvrag_jax/train/samples.py):
        "sample_count": 2,           # objects spread over the validation split of the run's data (caption as
                                     # prompt, its simulated retrievals), fixed seeds: grids comparable over steps
        "sample_steps": 50,          # DDIM steps of the main pass
        "sample_prior_steps": 10,    # of the prior pass (DINOv2 fusion weight; skipped when the init has no DINOv2,
                                     # then the main pass runs at 1.5 l / (1 + l), l = text_weight: samples.py)
        "sample_guidance": 5.0,
        "keep_checkpoints": 3,
        # One trainer per workdir (mvrag_jax/train/lock.py): WORKDIR/train.lock has a heartbeat every 30 s; a lock
        # whose heartbeat is older than this is a dead or hung trainer's, and a new run takes it over.
        "lock_stale_after_s": 600.0,
    })


def get_config(arg: str | None = None) -> mlc.ConfigDict:
    args = common.parse_arg(arg, size="full")
    if args.size in ("full", "paper"):
        source = "real" if args.size == "paper" else "synthetic"  # the paper's run reads its renders and class sets
        c, d = mvrag_sd21.get_config(), data.get_config(f"size=paper,source={source}")
        # remat=ordered (full remat, each block recomputed only once its output gradient exists): update program
        # temporaries at batch 24 on v5e:2x4 were 9.95 GiB with dots_saveable, 2.07 with full, 1.48 with ordered
        c.runtime.update(dtype="bfloat16", matmul_precision="default", remat="ordered")
    elif args.size in ("tiny", "medium", "micro", "demo"):
        c, d = tiny.get_config("size=medium" if args.size == "medium" else "size=tiny"), data.get_config("size=tiny")
    else:
        raise UsageError(f"configs/train.py: size={args.size!r}; choose micro, tiny, demo, medium, full or paper")
    if args.size == "micro":
        c.model.image_size = 16
        c.model.unet.update(image_size=16, channel_mult=(1,), attention_resolutions=(1,))
        c.model.vae.update(block_out_channels=(32,))
    c.train = train_block()
    c.data = d
    c.data.data_dir = ""  # "" = WORKDIR/data (built there on first use); set a folder to share datasets across runs
    if args.size in ("full", "paper"):
        c.train.init = ""  # must be set: --config.train.init /path/to/converted/ckpt
        c.train.update(frozen_dtype="bfloat16", encoders="separate", encode_chunk_rows=4)
        # EMA horizon 1 / (1 - 0.999) = 1,000 updates, ~1/10 of the paper's ~11k-step run. 0.9999 (common for
        # diffusion runs of 100k+ steps) would average over ~10k, nearly the whole run including the barely adapted
        # start; with the warm-up the decay is (1 + n) / (10 + n) until it reaches 0.999 at n ~ 9,000, so the EMA
        # covers about the last n / 9 updates until then. One fp32 copy of the trainable weights, sharded like them.
        # (A run of this config's full 100k steps may prefer 0.9999: --config.train.ema_decay=0.9999.)
        c.train.ema_decay = 0.999
        c.mesh.update(data=1, fsdp=-1, tensor=1)
    else:
        c.train.update(batch_size=8, steps=200, trainable="unet", log_every=10, ckpt_every=100, sample_every=100,
                       sample_steps=10, sample_prior_steps=3)
        c.train.optimizer.update(learning_rate=1e-4, warmup_steps=10)
        c.train.update(cfg_drop_text=0.1, cfg_drop_image=0.1, cfg_drop_both=0.1)
        c.mesh.update(data=-1, fsdp=1, tensor=1)
    if args.size == "paper":
        # Appendix C.2: "AdamW, learning rate 5e-6, batch 24, about 11,000 steps", modes alternating with equal steps
        # (data.mix per="batch", weights 1:1). The paper names no schedule, warm-up, weight decay or clipping: the
        # optimizer block's defaults stay (constant after 100 warm-up steps, torch AdamW's 0.01 decay, clip 1.0).
        c.train.update(batch_size=24, steps=11_000, trainable="ip", log_every=50, ckpt_every=1000, sample_every=1000)
        c.train.optimizer.update(learning_rate=5e-6, schedule="constant")
        c.data.mix.update(weight_3d=1.0, weight_2d=1.0, per="batch")
    if args.size == "demo":
        # 8x8 pixels per latent: 32 px views diffuse as 4x4 latents, which minutes of CPU training can fit
        c.model.vae.update(block_out_channels=(32, 32, 32, 32), norm_num_groups=1, scaling_factor=1.0)
        c.model.unet.image_size = 4
        c.train.update(init="", batch_size=16, steps=400, log_every=25, ckpt_every=100, sample_every=0)
        c.train.optimizer.update(learning_rate=3e-3, warmup_steps=20, schedule="constant")
        c.mesh.update(data=2, fsdp=4, tensor=1)
    # The loader's batch is per host: on one host the global batch. `mvrag train` derives it from train.batch_size
    # (train.batch_size / hosts, train/loop.py resolve_config), so a run sets only --config.train.batch_size; code
    # that builds a trainer itself keeps both consistent (make_trainer checks).
    c.data.batch_size = c.train.batch_size
    c.data.num_views = c.model.get_ref("num_frames")
    c.data.num_retrieved = c.model.get_ref("num_retrieved")
    c.data.image_size = c.model.get_ref("image_size")
    c.data.retrieved_size = c.model.clip_vision.get_ref("image_size")  # other sizes are resized in the step
    return c
