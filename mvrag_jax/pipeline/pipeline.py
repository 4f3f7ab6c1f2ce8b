"""End-to-end MV-RAG generation (official MVRAGPipeline.__call__), batched over objects.

    pipe = Pipeline.load(ckpt="ckpt/mvrag")                 # or release="path/to/release" (converted in memory)
    results, timings = pipe.generate([ObjectRequest("A red vintage car.", retrieved=(img0, img1), seed=7)],
                                     SamplingOptions(num_inference_steps=50, prior_steps=10, guidance_scale=5.0))
    results[0].images            # [views, H, W, 3] uint8 (diffusers rounding)

Per object: prompt -> CLIP text embeddings ([uncond '', cond prompt + ', 3d asset']); retrieved images -> official
preprocessing -> CLIP hidden_states[-2] -> resampler tokens (uncond: zeros in normalised pixel space); a prior pass of
`prior_steps` without image tokens from the same initial latents; its decoded views against the retrieved images in
DINOv2 give the fusion weight max(0, score); the main pass of `num_inference_steps` uses image tokens at that weight;
decode; uint8. An object without retrieved images is generated text-only (main pass without image tokens).

Batching: objects with the same number of retrieved images k form one group and run as one batch in every stage
(rows [object, CFG half, view]); each stage is compiled ahead of time once per shape, so repeated calls with the
same batch shapes never recompile, and `timings["compile"]` reports compile time apart from the stage times. With a
mesh, the object axis is data-parallel over the mesh's (data, fsdp) axes (padded to a multiple of their size with
copies of the last object) and params are replicated.

Fusion path (`SamplingOptions.fusion_path`): "exact" runs the official host steps (uint8 truncation, PIL resize) on
the prior views; "device" does the same inside a compiled program (mvrag_jax/pipeline/device_preprocess.py reproduces Pillow's
8-bit resampling in integer arithmetic), so no image leaves the device between the passes. Measured on the tiny
release (CPU, fp32): the device path's DINOv2 pixel values are bit-identical to the host path's, and so are the
embeddings and the fusion weight (|device - exact| = 0.0 on dinov2.npz gen_images (weight 0.78005), on the
pipeline_e2e prior views (0.68899) and, inside the full pipeline, on seeds 0-7 (weights 0.685-0.728);
tests/pipeline/test_device_preprocess.py, test_fusion.py, test_pipeline.py). The default is therefore "device": it is
as exact as the host path and skips a device -> host -> device round trip of every view between the passes (and the
host's serial PIL work per view). With the full-size release (256-px views, DINOv2 shortest edge 256, crop 224) no
resize happens at all, only truncation and crop, which are exact by construction. "exact" remains for audits against the official code; the parity check uses it.
"""

import contextlib
import dataclasses
import functools
import pathlib
import time
from typing import Any, Iterator, Sequence

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from mvrag_jax.inputs import camera, images, text
from mvrag_jax.pipeline import fusion, programs as stages
from mvrag_jax.convert import load_model_checkpoint
from mvrag_jax.convert.components import convert_component, release_components
from mvrag_jax.diffusion import ddim
from mvrag_jax.diffusion.sample import schedule_tables
from mvrag_jax.models import dinov2
from mvrag_jax.models.attention_kernels import check_kernel
from mvrag_jax.inputs.release import Release
from mvrag_jax.errors import MvragError

FUSION_PATHS = ("exact", "device")
MODES = ("3d", "2d")
DTYPES = ("float32", "bfloat16")
DATA_AXES = ("data", "fsdp")  # the mesh axes objects are split over
STAGES = ("encode", "prior", "fusion", "main", "decode")
TEXT_COMPONENTS = ("unet", "clip_text", "vae")
IMAGE_COMPONENTS = ("resampler", "clip_vision")  # and "dinov2" for the prior pass


class PipelineError(MvragError, ValueError):
    """A request, option or model set the pipeline cannot run."""


@dataclasses.dataclass(frozen=True)
class SamplingOptions:
    num_inference_steps: int = 50
    prior_steps: int = 10                # official default num_initial_steps
    guidance_scale: float = 5.0          # official main.py uses 5; 1.0 = plain conditional sampling
    elevation: float = 15.0
    azimuth_start: float = 0.0
    use_prior: bool = True               # False (--no-prior): skip the prior pass; fusion_weight must then be given
    fusion_weight: float | None = None   # fixed main-pass weight (ablation / teacher forcing); None: from the prior
    fusion_path: str = "device"          # "device" (in-graph) | "exact" (host uint8 + PIL); see the module docstring
    # "2d": single-view 2D mode, as training's 2D objects (MVDream's num_frames=1): no camera embedding and no
    # ", 3d asset" suffix; needs a pipeline with num_views=1 (data_pipelines/variants.py uses it).
    mode: str = "3d"

    def __post_init__(self):
        if self.num_inference_steps < 1 or (self.use_prior and self.prior_steps < 1):
            raise PipelineError(f"num_inference_steps={self.num_inference_steps}, prior_steps={self.prior_steps}: "
                                "both must be >= 1 (pass use_prior=False to skip the prior pass)")
        if not self.use_prior and self.fusion_weight is None:
            raise PipelineError("use_prior=False needs a fixed fusion_weight (the prior pass is what computes it); "
                                "pass e.g. fusion_weight=1.0")
        if self.fusion_path not in FUSION_PATHS:
            raise PipelineError(f"fusion_path={self.fusion_path!r}; choose one of {FUSION_PATHS}")
        if self.mode not in MODES:
            raise PipelineError(f"mode={self.mode!r}; choose one of {MODES}")


@dataclasses.dataclass(frozen=True)
class ObjectRequest:
    prompt: str
    retrieved: tuple[np.ndarray, ...] = ()      # uint8 HWC RGB images (empty -> text-only generation)
    seed: int = 0
    initial_latents: np.ndarray | None = None   # [views, h, w, c] NHWC override (parity with stored latents)


@dataclasses.dataclass(frozen=True)
class ObjectResult:
    images: np.ndarray                  # [views, H, W, 3] uint8, (x * 255).round() as diffusers' numpy_to_pil
    images_float: np.ndarray            # [views, H, W, 3] float32 in [0, 1]
    prior_images: np.ndarray | None     # [views, H, W, 3] float32 decoded prior pass (None when not run)
    fusion_weight: float | None         # scale used by the main pass (None when text-only)
    similarity_score: float | None      # DINOv2 score of the prior pass (None when not run)
    latents: np.ndarray                 # [views, h, w, c] main-pass latents before decode
    prior_latents: np.ndarray | None    # [views, h, w, c] prior-pass latents before decode
    fusion: fusion.FusionWeight | None  # embeddings and per-view similarities of the prior pass


@dataclasses.dataclass
class Pipeline:
    """Models of one release, ready to generate. Build with `Pipeline.load` (or `from_components`).

    The host-side settings (schedule, tokenizer, CLIP and DINOv2 processors) come from `release` unless given, so a
    pipeline can also run models held in memory without a release (training samples, mvrag_jax/train/samples.py).
    `dataclasses.replace(pipe, params=...)` swaps the weights and keeps the compiled programs and the settings."""

    release: Release | None             # the release (or a checkpoint's release_files/) for tokenizer, configs
    configs: dict[str, Any]
    params: dict[str, Any]              # on device (replicated over `mesh` when given)
    num_views: int
    image_size: int
    mesh: Mesh | None = None
    programs: stages.Programs = dataclasses.field(default_factory=stages.Programs)
    schedule: ddim.DDIMSchedule | None = None
    tokenizer: Any = None               # a transformers CLIPTokenizer
    clip_processor: images.CLIPImageProcessorConfig | None = None
    dino_processor: images.CLIPImageProcessorConfig | None = None

    def _from_release(self, what: str, read: Any) -> Any:
        if self.release is None:
            raise PipelineError(f"no release to read the {what} from; pass it to Pipeline.from_components")
        return read(self.release)

    def __post_init__(self):
        if self.schedule is None:
            self.schedule = self._from_release("scheduler config", ddim.DDIMSchedule.from_release)
        if self.tokenizer is None:
            self.tokenizer = self._from_release("tokenizer", text.load_tokenizer)
        self.has_image_branch = self.configs["unet"].image_branch
        # DINOv2 serves only the prior pass's fusion weight: without it, image-conditioned objects need a fixed
        # fusion_weight (SamplingOptions(use_prior=False, ...)).
        self.has_dinov2 = "dinov2" in self.params
        if self.has_image_branch:
            missing = [name for name in IMAGE_COMPONENTS if name not in self.params]
            if missing:
                raise PipelineError(f"the UNet has an image branch but the models lack {missing}; convert the full "
                                    "MV-RAG release (resampler/, image_encoder/, facebook/dinov2-base/)")
            if self.clip_processor is None:
                self.clip_processor = self._from_release("CLIP image processor",
                                                         images.CLIPImageProcessorConfig.from_release)
        if self.has_dinov2 and self.dino_processor is None:
            self.dino_processor = self._from_release("DINOv2 image processor", dinov2.processor_config)
        factor = self.configs["vae"].downscale_factor
        if self.image_size % factor:
            raise PipelineError(f"image_size={self.image_size} is not a multiple of the VAE factor {factor}")
        self.latent_shape = (self.num_views, self.image_size // factor, self.image_size // factor,
                             self.configs["unet"].in_channels)

    # ---- construction --------------------------------------------------------------------------------------------
    @classmethod
    def from_components(cls, release: Release, configs: dict[str, Any], params: dict[str, Any], *,
                        num_views: int = 4, image_size: int | None = None, dtype: str = "float32",
                        mesh: Mesh | None = None, attention: str | None = None,
                        programs: stages.Programs | None = None, replicate: bool = True,
                        **settings: Any) -> "Pipeline":
        """From converted (configs, params) per component. num_views: views per object (the official num_frames,
        not in the release); image_size: output side in pixels (default: the UNet's latent size x the VAE factor);
        attention: the UNet's attention kernel (models/attention_kernels.py KERNELS; None keeps the config's);
        programs: compiled stages to share with other pipelines of the same sizes (default: a fresh cache);
        replicate: False keeps params where they are (e.g. a train state sharded over `mesh`: the compiled stages
        then take them with those shardings); settings: schedule, tokenizer, clip_processor, dino_processor in
        place of the release's (release may then be None)."""
        if dtype not in DTYPES:
            raise PipelineError(f"dtype={dtype!r}; choose one of {DTYPES}")
        if num_views < 1:
            raise PipelineError(f"num_views={num_views}; it must be >= 1")
        missing = [name for name in TEXT_COMPONENTS if name not in params]
        if missing:
            raise PipelineError(f"the models lack {missing}; a release needs unet/, text_encoder/ and vae/")
        configs = {name: dataclasses.replace(config, dtype=dtype) if hasattr(config, "dtype") else config
                   for name, config in configs.items() if name in params}
        configs["unet"] = dataclasses.replace(configs["unet"], num_frames=num_views)
        if attention is not None:
            check_kernel(attention, "Pipeline", PipelineError)
            configs["unet"] = dataclasses.replace(configs["unet"], attention=attention)
        if image_size is None:
            image_size = configs["unet"].image_size * configs["vae"].downscale_factor
        if replicate:
            placement = None if mesh is None else NamedSharding(mesh, PartitionSpec())  # replicated
            params = jax.device_put(params, placement) if placement else jax.device_put(params)
        return cls(release, configs, params, num_views, image_size, mesh, programs or stages.Programs(), **settings)

    @classmethod
    def load(cls, *, ckpt: str | pathlib.Path | None = None, release: str | pathlib.Path | None = None,
             dtype: str = "float32", mesh: Mesh | None = None, attention: str = "auto", num_views: int = 4,
             image_size: int | None = None) -> "Pipeline":
        """From a checkpoint written by `mvrag convert` (ckpt) or an official release folder (converted in memory)."""
        if (ckpt is None) == (release is None):
            raise PipelineError("pass exactly one of ckpt (a `mvrag convert` output) or release (an official folder)")
        if ckpt is not None:
            configs, params = load_model_checkpoint(ckpt)
            source = Release.open(pathlib.Path(ckpt) / "release_files")
        else:
            source = Release.open(release)
            converted = {c.name: convert_component(source, c) for c in release_components(source)}
            configs = {name: config for name, (config, _) in converted.items()}
            params = {name: value for name, (_, value) in converted.items()}
        return cls.from_components(source, configs, params, num_views=num_views, image_size=image_size, dtype=dtype,
                                   mesh=mesh, attention=attention)

    # ---- placement -----------------------------------------------------------------------------------------------
    @property
    def data_parallel(self) -> int:
        """How many devices share the object axis (1 without a mesh)."""
        return 1 if self.mesh is None else int(np.prod([self.mesh.shape[a] for a in DATA_AXES]))

    def _put(self, array: Any) -> jax.Array:
        """A batch array (leading object axis) onto the device(s): split over (data, fsdp) with a mesh."""
        if self.mesh is None:
            return jax.device_put(array)
        return jax.device_put(array, NamedSharding(self.mesh, PartitionSpec(DATA_AXES)))

    def _replicated(self, array: Any) -> jax.Array:
        return jax.device_put(array, None if self.mesh is None else NamedSharding(self.mesh, PartitionSpec()))

    # ---- stages --------------------------------------------------------------------------------------------------
    def encode_prompts(self, prompts: Sequence[str], suffix: bool = True) -> jax.Array:
        """Prompt embeddings [b, 2, 77, ctx] ([uncond '', cond prompt + ', 3d asset'] per object; suffix=False: the
        prompt as it is, as training's 2D mode)."""
        b = len(prompts)
        if suffix:
            ids = text.prompt_input_ids(self.tokenizer, list(prompts))  # [2b, 77]: negatives, then positives
        else:
            ids = text.tokenize(self.tokenizer, [""] * b + list(prompts))
        ids = np.stack([ids[:b], ids[b:]], axis=1)  # [b, 2, 77]
        return self.programs.run("text", stages.encode_text, self.configs["clip_text"], self.params["clip_text"],
                                 self._put(ids))

    def encode_retrieved(self, retrieved: Sequence[Sequence[np.ndarray]]) -> jax.Array:
        """Image tokens [b, 2, k * Q, D] ([uncond, cond]) of b objects' k retrieved images each."""
        pixels = np.stack([images.retrieved_pixel_values(list(imgs), self.clip_processor) for imgs in retrieved])
        return self.programs.run("image_tokens", stages.encode_retrieved, self.configs["clip_vision"],
                                 self.params["clip_vision"], self.configs["resampler"], self.params["resampler"],
                                 self._put(pixels))

    def _retrieved_embeddings(self, retrieved: Sequence[Sequence[np.ndarray]]) -> jax.Array:
        pixels = np.stack([dinov2.preprocess(list(imgs), self.dino_processor) for imgs in retrieved])
        return self.programs.run("retrieved_embeddings", stages.retrieved_embeddings, self.configs["dinov2"],
                                 self.params["dinov2"], self._put(pixels))

    def _initial_latents(self, requests: Sequence[ObjectRequest]) -> jax.Array:
        seeds = np.asarray([r.seed for r in requests], np.uint32)
        noise = self.programs.run("noise", functools.partial(stages.initial_noise, shape=self.latent_shape),
                                  self._put(seeds), static=self.latent_shape)
        if all(r.initial_latents is None for r in requests):
            return noise
        noise = np.array(noise)
        for i, r in enumerate(requests):
            if r.initial_latents is not None:
                noise[i] = r.initial_latents
        return self._put(noise)

    def _sample(self, name: str, steps: int, latents, embeds, cam, tokens, scale, guidance) -> jax.Array:
        tables = tuple(self._replicated(t) for t in schedule_tables(self.schedule, steps))
        return self.programs.run(name, stages.sample, self.configs["unet"], self.params["unet"], tables, latents,
                                 embeds, cam, tokens, scale, guidance)

    def _decode(self, latents: jax.Array) -> jax.Array:
        return self.programs.run("decode", stages.decode, self.configs["vae"], self.params["vae"], latents)

    def _fusion(self, path: str, views: jax.Array, retrieved_embeddings: jax.Array) -> tuple[jax.Array, ...]:
        if path == "device":
            return self.programs.run("fusion_device", functools.partial(stages.fusion_on_device,
                                                                        self.dino_processor),
                                     self.configs["dinov2"], self.params["dinov2"], views, retrieved_embeddings,
                                     static=self.dino_processor)
        # Exact: the official host steps, uint8 truncation and PIL resize, on every view of every object.
        host_views = np.asarray(views)  # [b, views, H, W, 3]
        pixels = np.stack([dinov2.preprocess(list(fusion.views_to_uint8(v)), self.dino_processor)
                           for v in host_views])
        return self.programs.run("fusion_exact", stages.fusion_from_pixels, self.configs["dinov2"],
                                 self.params["dinov2"], self._put(pixels), retrieved_embeddings)

    # ---- generate ------------------------------------------------------------------------------------------------
    def _check(self, requests: Sequence[ObjectRequest], options: SamplingOptions) -> None:
        if not requests:
            raise PipelineError("generate got no requests; pass at least one ObjectRequest")
        if options.mode == "2d" and self.num_views != 1:
            raise PipelineError(f"mode='2d' generates one view per object, but this pipeline has num_views="
                                f"{self.num_views}; load it with num_views=1")
        for i, r in enumerate(requests):
            if not isinstance(r.prompt, str):
                raise PipelineError(f"request {i}: prompt must be a string, got {type(r.prompt).__name__}")
            if r.retrieved and not self.has_image_branch:
                raise PipelineError(f"request {i} has {len(r.retrieved)} retrieved images but this model has no image "
                                    "branch (an MVDream-style base without to_k_ip/to_v_ip); pass retrieved=()")
            if r.retrieved and options.use_prior and not self.has_dinov2:
                raise PipelineError(f"request {i} has retrieved images and the prior pass is on, but the models lack "
                                    "dinov2 (facebook/dinov2-base/), which scores it; pass use_prior=False with a "
                                    "fusion_weight, or convert the full release")
            if r.initial_latents is not None and tuple(np.shape(r.initial_latents)) != self.latent_shape:
                raise PipelineError(f"request {i}: initial_latents have shape {np.shape(r.initial_latents)}; expected "
                                    f"{self.latent_shape} = [views, h, w, c] (NHWC)")
            if not 0 <= int(r.seed) < 2 ** 32:
                raise PipelineError(f"request {i}: seed={r.seed} must be in [0, 2**32)")

    def generate(self, requests: Sequence[ObjectRequest], options: SamplingOptions = SamplingOptions()
                 ) -> tuple[list[ObjectResult], dict[str, float]]:
        """Results in request order, and seconds per stage (encode, prior, fusion, main, decode; compile apart)."""
        self._check(requests, options)
        timings = dict.fromkeys(STAGES, 0.0)
        compile_before = self.programs.compile_seconds
        groups: dict[int, list[int]] = {}
        for i, r in enumerate(requests):
            groups.setdefault(len(r.retrieved), []).append(i)
        results: list[ObjectResult | None] = [None] * len(requests)
        for k, indices in sorted(groups.items()):
            batch = [requests[i] for i in indices]
            batch += [batch[-1]] * (-len(batch) % self.data_parallel)  # pad to the data-parallel width
            for i, result in zip(indices, self._generate_group(batch, options, timings)):
                results[i] = result
        timings["compile"] = self.programs.compile_seconds - compile_before
        return results, timings

    def _generate_group(self, batch: list[ObjectRequest], options: SamplingOptions,
                        timings: dict[str, float]) -> list[ObjectResult]:
        """One group of objects with the same number of retrieved images, as one batch through every stage."""
        clock = functools.partial(_stage, timings, self.programs)
        block = jax.block_until_ready
        b, k = len(batch), len(batch[0].retrieved)
        image_mode = k > 0
        with clock("encode"):
            embeds = self.encode_prompts([r.prompt for r in batch], suffix=options.mode == "3d")
            latents = self._initial_latents(batch)
            cam = camera.get_camera(self.num_views, options.elevation, options.azimuth_start)  # [views, 16]
            with_camera = self.configs["unet"].camera_dim and options.mode == "3d"
            cam = self._put(np.broadcast_to(cam, (b, *cam.shape)).copy()) if with_camera else None
            guidance = self._replicated(np.float32(options.guidance_scale))
            tokens = self.encode_retrieved([r.retrieved for r in batch]) if image_mode else None
            run_prior = image_mode and options.use_prior
            retrieved_embeddings = self._retrieved_embeddings([r.retrieved for r in batch]) if run_prior else None
            block((embeds, latents, tokens, retrieved_embeddings))
        prior_latents = prior_views = fused = None
        if run_prior:
            with clock("prior"):
                prior_latents = block(self._sample("sample_prior", options.prior_steps, latents, embeds, cam, None,
                                                   self._put(np.ones(b, np.float32)), guidance))
            with clock("decode"):
                prior_views = block(self._decode(prior_latents))
            with clock("fusion"):
                fused = block(self._fusion(options.fusion_path, prior_views, retrieved_embeddings))
        if not image_mode:
            scale = self._put(np.ones(b, np.float32))  # unused without image tokens
        elif options.fusion_weight is not None:
            scale = self._put(np.full(b, options.fusion_weight, np.float32))
        else:
            scale = fused[3]
        with clock("main"):
            final = block(self._sample("sample_main", options.num_inference_steps, latents, embeds, cam, tokens,
                                       scale, guidance))
        with clock("decode"):
            views = block(self._decode(final))
        return _results(b, views, final, prior_views, prior_latents, fused, retrieved_embeddings,
                        _to_host(scale) if image_mode else None)


@contextlib.contextmanager
def _stage(timings: dict[str, float], compiled: stages.Programs, stage: str) -> Iterator[None]:
    """Add the stage's wall time, less the compile time spent inside it, to timings[stage] (callers block on the
    stage's outputs inside the block so asynchronous dispatch does not shift time into the next stage)."""
    start, compile_start = time.perf_counter(), compiled.compile_seconds
    yield
    timings[stage] += time.perf_counter() - start - (compiled.compile_seconds - compile_start)


def _to_uint8(images_float: np.ndarray) -> np.ndarray:
    """diffusers' numpy_to_pil: (x * 255).round() -> uint8."""
    return (images_float * 255).round().astype(np.uint8)


def _to_host(x: jax.Array) -> np.ndarray:
    """A device array as numpy; one split over several processes' devices (a multi-host mesh) is gathered first."""
    if isinstance(x, jax.Array) and not x.is_fully_addressable:
        from jax.experimental import multihost_utils
        return np.asarray(multihost_utils.process_allgather(x, tiled=True))
    return np.asarray(x)


def _results(b, views, final, prior_views, prior_latents, fused, retrieved_embeddings, scale) -> list[ObjectResult]:
    host = lambda x: None if x is None else _to_host(x).astype(np.float32)
    views, final, prior_views, prior_latents = host(views), host(final), host(prior_views), host(prior_latents)
    fused = None if fused is None else [host(x) for x in fused]
    retrieved_embeddings = host(retrieved_embeddings)
    results = []
    for i in range(b):
        weight = None
        if fused is not None:
            embeddings, per_view, score, fused_scale = (x[i] for x in fused)
            weight = fusion.FusionWeight(scale=fused_scale, score=score, per_view_mean_sim=per_view,
                                         view_embeddings=embeddings, retrieved_embeddings=retrieved_embeddings[i])
        results.append(ObjectResult(
            images=_to_uint8(views[i]), images_float=views[i],
            prior_images=None if prior_views is None else prior_views[i],
            fusion_weight=None if scale is None else float(scale[i]),
            similarity_score=None if weight is None else float(weight.score),
            latents=final[i], prior_latents=None if prior_latents is None else prior_latents[i], fusion=weight))
    return results
