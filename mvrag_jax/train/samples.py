"""Sample grids during training: the loop's `sample_fn`, generating a fixed set of objects from the current weights
with the inference pipeline (mvrag_jax/pipeline/pipeline.py: prior pass, DINOv2 fusion weight, main pass, decode).

    sampler = make_sample_fn(cfg, trainer)       # cheap: nothing is compiled until the first call
    grids = sampler(state, step)                 # {"0_a-red-cube": [H, W, 3] uint8, ...}: retrieved | views
    sampler.compile_seconds                      # the pipeline's compile time so far (not step time)

`train/loop.py run` builds it when `train.sample_every > 0` and a multiple of it falls in the run; process 0 writes
WORKDIR/samples/<name>_<step>.png and TensorBoard images.

What is sampled: `train.sample_count` objects spread evenly over the validation split of the run's own data (the
3D mode's dataset; the 2D mode's when the run has no 3D data; the training split when the dataset has no
validation split): their caption is the prompt and their simulated retrievals, drawn with a fixed seed, the
retrieved images. Every object has a fixed seed too, so the grids of successive steps differ only by the weights.
DDIM steps: `train.sample_steps` (main pass) and `train.sample_prior_steps`; guidance `train.sample_guidance`.

Where the host-side settings come from: a run initialised from a converted checkpoint uses its release files
(tokenizer, scheduler, CLIP and DINOv2 processors), as `mvrag generate` on its export would, and its DINOv2 weights;
a random / base run uses its own config (cfg.data.tokenizer_dir, cfg.train.scheduler, the CLIP size and statistics)
and has no DINOv2, so it samples without the prior pass at the fixed fusion weight `sample_fusion_weight` (logged
once): the inference scale s whose weights (s, 1.5 - s) keep training's text : retrieval ratio l : 1
(train.text_weight), s = 1.5 l / (1 + l); at the default l = 0.5, s = 0.5 and the sampled combination is exactly the
trained one. (A fixed s, not the DINOv2 weight, so the grids of successive steps differ only by the weights.)

Which weights: the EMA (train.ema_decay > 0: what `mvrag export --ema` would write), else the trained ones.

Sharding: the weights stay on the train state's shardings and objects are split over the mesh's (data, fsdp) axes
(the pipeline pads them to a multiple of that size), so every process takes part and each stage compiles once.
"""

import dataclasses
import pathlib
from typing import Any

import jax
import ml_collections as mlc
import numpy as np
from absl import logging
from jax.sharding import NamedSharding, PartitionSpec

from data_pipelines import build, loader, records, transforms
from mvrag_jax.pipeline import generate
from mvrag_jax.inputs import images, text
from mvrag_jax.convert.checkpoint import load_checkpoint, load_configs
from mvrag_jax.convert.components import COMPONENTS as CONVERTED
from mvrag_jax.diffusion.ddim import DDIMSchedule
from mvrag_jax.models.attention import IP_TOTAL_WEIGHT
from mvrag_jax.pipeline import ObjectRequest, Pipeline, SamplingOptions
from mvrag_jax.inputs.release import Release
from mvrag_jax.train import state as state_lib
from mvrag_jax.train.ema import ema_decay_of
from mvrag_jax.train.trainer import Trainer, clip_statistics, text_weight_of
from mvrag_jax.errors import MvragError

# What the MV-RAG (and SD2.1) scheduler_config.json sets beyond the betas; cfg.train.scheduler holds the betas only.
RELEASE_DDIM = {"set_alpha_to_one": False, "steps_offset": 1}
SAMPLE_SPLIT = "validation"
_CHECKPOINT_CLASSES = {c.name: c.config_class for c in CONVERTED}
_SEED = 0  # the retrieval simulation's seed (with the record index): the same retrieved images at every step


class SampleConfigError(MvragError, ValueError):
    """The sample settings of the train config cannot run; the message names the field."""


@dataclasses.dataclass(frozen=True)
class SampleObject:
    name: str                           # file name stem: <position>_<slug of the prompt>
    request: ObjectRequest


def data_objects(data_cfg: mlc.ConfigDict, count: int) -> list[SampleObject]:
    """`count` objects spread evenly over the run's validation data: caption -> prompt, simulated retrievals ->
    retrieved images (what the loader's transform draws, with a fixed seed), seed = position."""
    mode_key = "mode_3d" if float(data_cfg.mix.weight_3d) > 0 else "mode_2d"
    dataset, kind = build.mode_dataset(data_cfg, mode_key)
    builder = build.prepare(data_cfg, dataset, kind)
    split = SAMPLE_SPLIT if SAMPLE_SPLIT in builder.info.splits else data_cfg[mode_key].split
    source = builder.as_data_source(split=split)
    tokenizer = transforms.Tokenizer(data_cfg.tokenizer_dir, int(data_cfg.max_length))
    if mode_key == "mode_3d":
        transform = transforms.MultiviewTransform(data_cfg, tokenizer)
        prompt_of = lambda record: records.as_text(record["caption"])
    else:
        transform = transforms.ClassTransform(data_cfg, tokenizer, source, loader.class_ranges(builder, split))
        prompt_of = lambda record: transforms.prompt_2d(records.as_text(record["class_name"]),
                                                        data_cfg.mode_2d.caption_template)
    objects = []
    for position, index in enumerate(np.linspace(0, len(source) - 1, min(count, len(source))).round().astype(int)):
        record = {**source[int(index)], "_index": int(index)}
        example = transform(record, np.random.default_rng([_SEED, int(index)]))
        prompt = prompt_of(record)
        objects.append(SampleObject(f"{position}_{generate.slugify(prompt)}",
                                    ObjectRequest(prompt, tuple(example["retrieved"]), seed=position)))
    logging.info("sample objects: %d from %s:%s (%s)", len(objects), dataset, split,
                 "; ".join(o.request.prompt for o in objects))
    return objects


def sample_fusion_weight(text_weight: float) -> float:
    """The inference fusion scale s whose weights (s, 1.5 - s) are in training's ratio l : 1 (l = text_weight)."""
    return IP_TOTAL_WEIGHT * text_weight / (1.0 + text_weight)


def _release_files(cfg: mlc.ConfigDict) -> pathlib.Path | None:
    init = str(cfg.train.init)
    if not state_lib.is_checkpoint_init(init):
        return None
    folder = pathlib.Path(init).expanduser() / "release_files"
    return folder if (folder / "model_index.json").is_file() else None


def _config_settings(cfg: mlc.ConfigDict, trainer: Trainer) -> dict[str, Any]:
    """Pipeline settings of a run without release files, from its config."""
    side = trainer.models.clip_vision.image_size
    mean, std = clip_statistics(cfg)
    folder = cfg.data.tokenizer_dir or transforms.DEFAULT_TOKENIZER_DIR
    return {"schedule": DDIMSchedule.from_config({**dict(cfg.train.scheduler), **RELEASE_DDIM},
                                                 where="cfg.train.scheduler"),
            "tokenizer": text.tokenizer_from_folder(pathlib.Path(folder).expanduser()),
            "clip_processor": images.CLIPImageProcessorConfig(shortest_edge=side, crop_hw=(side, side),
                                                              image_mean=mean, image_std=std)}


def _dinov2(cfg: mlc.ConfigDict, trainer: Trainer) -> tuple[dict, dict]:
    """(configs, params) of the init checkpoint's DINOv2, replicated over the mesh; empty when it has none."""
    init = pathlib.Path(str(cfg.train.init)).expanduser()
    if "dinov2" not in load_configs(init, _CHECKPOINT_CLASSES):
        return {}, {}
    configs, params = load_checkpoint(init, _CHECKPOINT_CLASSES)  # orbax restores the whole tree; keep DINOv2
    replicated = NamedSharding(trainer.mesh, PartitionSpec())
    return {"dinov2": configs["dinov2"]}, {"dinov2": jax.device_put(params["dinov2"], replicated)}


class Sampler:
    """The loop's `sample_fn(state, step) -> {name: [H, W, 3] uint8}`: one grid (retrieved images | views) per
    sample object, generated from the state's weights where they lie (see the module docstring); `use_ema`: from
    the state's EMA of the trainable weights instead."""

    def __init__(self, pipeline: Pipeline, objects: list[SampleObject], options: SamplingOptions,
                 matmul_precision: str, use_ema: bool = False):
        self.pipeline, self.objects, self.options = pipeline, objects, options
        self.matmul_precision, self.use_ema = matmul_precision, use_ema

    @property
    def compile_seconds(self) -> float:
        return self.pipeline.programs.compile_seconds

    def __call__(self, state: state_lib.TrainState, step: int) -> dict[str, np.ndarray]:
        params = {**self.pipeline.params, **state.params(ema=self.use_ema)}  # DINOv2 (if any) + the current weights
        pipeline = dataclasses.replace(self.pipeline, params=params)
        with jax.default_matmul_precision(self.matmul_precision):
            results, timings = pipeline.generate([o.request for o in self.objects], self.options)
        if timings["compile"]:
            logging.info("compiled the sampler in %.1f s (not counted as step time)", timings["compile"])
        return {o.name: generate.grid_image(o.request.retrieved, r.images) for o, r in zip(self.objects, results)}


def make_sample_fn(cfg: mlc.ConfigDict, trainer: Trainer) -> Sampler:
    """The sampler of a run of `cfg` (resolved: data.data_dir set, datasets built) on `trainer`'s mesh."""
    t, models = cfg.train, trainer.models
    if int(t.sample_count) < 1:
        raise SampleConfigError(f"train.sample_count={t.sample_count}; set --config.train.sample_count to at least 1 "
                                "(or --config.train.sample_every=0 for no samples)")
    folder = _release_files(cfg)
    if folder is not None:
        release, settings = Release.open(folder), {}
        extra_configs, extra_params = _dinov2(cfg, trainer)
    else:
        release, settings = None, _config_settings(cfg, trainer)
        extra_configs, extra_params = {}, {}
    configs = {name: getattr(models, name) for name in state_lib.COMPONENTS} | extra_configs
    # Abstract stand-ins for the trained weights (each call swaps in the state's own): enough to build and check.
    params = trainer.abstract_state.params() | extra_params
    pipeline = Pipeline.from_components(release, configs, params, num_views=models.unet.num_frames,
                                        image_size=int(cfg.data.image_size),  # the training resolution
                                        dtype=str(cfg.runtime.dtype), mesh=trainer.mesh, replicate=False, **settings)
    use_prior = pipeline.has_dinov2
    fusion_weight = sample_fusion_weight(text_weight_of(cfg))
    if not use_prior:
        logging.warning("samples: the run's models have no DINOv2 (train.init=%s), so they are generated without the "
                        "prior pass, at fusion weight %.4g (train.text_weight=%s at inference)", t.init,
                        fusion_weight, t.text_weight)
    options = SamplingOptions(num_inference_steps=int(t.sample_steps), prior_steps=int(t.sample_prior_steps),
                              guidance_scale=float(t.sample_guidance), use_prior=use_prior,
                              fusion_weight=None if use_prior else fusion_weight)
    use_ema = ema_decay_of(cfg) > 0
    if use_ema:
        logging.info("samples: from the EMA of the trained weights (train.ema_decay=%s)", t.ema_decay)
    return Sampler(pipeline, data_objects(cfg.data, int(t.sample_count)), options,
                   str(cfg.runtime.matmul_precision), use_ema=use_ema)
