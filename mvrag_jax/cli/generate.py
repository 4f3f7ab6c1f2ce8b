"""`mvrag generate`: prompts (+ retrieved images) -> multiview images, resumable, batched, multi-process."""

import json

from absl import flags

from mvrag_jax.errors import UsageError
from mvrag_jax.cli.flags import Command, define_processes, use_cpu_collectives
from mvrag_jax.cli.reconstruct import define_lgm


def define_generate(fv):
    flags.DEFINE_string("ckpt", None, "mvrag checkpoint folder (from `mvrag convert` or training).", flag_values=fv)
    flags.DEFINE_string("release", None, "Official release folder (converted in memory), instead of --ckpt.",
                        flag_values=fv)
    flags.DEFINE_string("prompt", None, "One prompt, e.g. \"a red vintage car\".", flag_values=fv)
    flags.DEFINE_string("prompts", None, "Prompt file: one prompt per line, or JSON lines {\"prompt\": ..., "
                        "\"retrieved\": FOLDER} (folder relative to the file).", flag_values=fv)
    flags.DEFINE_string("retrieved", None, "Folder of retrieved images (the first --k by name are used).",
                        flag_values=fv)
    flags.DEFINE_string("index", None, "Retrieval index (from `mvrag index`), instead of --retrieved.", flag_values=fv)
    flags.DEFINE_integer("k", 4, "Retrieved images per object.", flag_values=fv)
    flags.DEFINE_list("seeds", ["0"], "Seeds: each prompt is generated once per seed.", flag_values=fv)
    flags.DEFINE_integer("steps", 50, "DDIM steps of the main pass.", flag_values=fv)
    flags.DEFINE_integer("prior_steps", 10, "DDIM steps of the prior pass (it sets the fusion weight).",
                         flag_values=fv)
    flags.DEFINE_float("guidance", 5.0, "Classifier-free guidance scale (>= 1; 1 disables it).", flag_values=fv)
    flags.DEFINE_float("elevation", 15.0, "Camera elevation of the views, degrees.", flag_values=fv)
    flags.DEFINE_string("dtype", "fp32", "Compute dtype: fp32 or bf16 (params stay fp32).", flag_values=fv)
    flags.DEFINE_bool("no_prior", False, "Skip the prior pass; needs --fusion_weight.", flag_values=fv)
    flags.DEFINE_float("fusion_weight", None, "Fixed fusion weight for the main pass (ablations).", flag_values=fv)
    flags.DEFINE_bool("require_retrieval", False, "Fail instead of generating text-only when no image is found.",
                      flag_values=fv)
    flags.DEFINE_float("relevance_threshold", None, "Paper §3.5: drop --index hits whose prompt-caption similarity "
                       "is below this (normalised BM25 in [0, 1], or CLIP cosine in [-1, 1] with --relevance_clip); "
                       "an object left with none runs text-only. Default: off, as in the official code.",
                       flag_values=fv)
    flags.DEFINE_string("relevance_clip", None, "transformers CLIPModel folder: score captions by CLIP text-text "
                        "cosine instead of normalised BM25 (needed with a dense --index).", flag_values=fv)
    flags.DEFINE_integer("batch", 1, "Objects per device call (rounded up to a multiple of the local devices).",
                         flag_values=fv)
    flags.DEFINE_string("out", None, "Output folder: one subfolder per object (views, grid.png, record.json); "
                        "a rerun skips complete objects.", flag_values=fv)
    flags.DEFINE_bool("reconstruct", False, "Then turn every object into a 3D asset with LGM (needs --lgm): "
                      "gaussians.ply, 18 renders and turntable.gif in its folder (as `mvrag reconstruct`).",
                      flag_values=fv)
    define_lgm(fv)
    define_processes(fv)  # every process takes its own share of the objects and writes to the shared --out
    flags.mark_flags_as_required(["out"], flag_values=fv)


def run_generate(fv, argv):
    from mvrag_jax.cluster import distributed
    from mvrag_jax.pipeline import generate
    if fv.reconstruct != (fv.lgm is not None):
        raise UsageError("--reconstruct needs --lgm model_fp16_fixrot.safetensors (and --lgm is only used by it)")
    use_cpu_collectives(fv)
    distributed.initialize(fv.coordinator, fv.num_processes, fv.process_id, timeout_s=fv.init_timeout,
                           auto=fv.multihost)
    settings = generate.Settings(steps=fv.steps, prior_steps=fv.prior_steps, guidance=fv.guidance,
                                 elevation=fv.elevation, dtype=fv.dtype, use_prior=not fv.no_prior,
                                 fusion_weight=fv.fusion_weight, k=fv.k, require_retrieval=fv.require_retrieval,
                                 batch=fv.batch, relevance_threshold=fv.relevance_threshold,
                                 relevance_clip=fv.relevance_clip)
    summary = generate.run(out=fv.out, ckpt=fv.ckpt, release=fv.release, prompt=fv.prompt, prompts=fv.prompts,
                           retrieved=fv.retrieved, index=fv.index, seeds=fv.seeds, settings=settings)
    if fv.reconstruct:  # every object folder of --out, at the elevation its record.json holds
        from mvrag_jax.recon import reconstruct
        summary["reconstruct"] = reconstruct.run(views=fv.out, lgm_path=fv.lgm, out=fv.out,
                                                 input_size=fv.lgm_input_size)
    print(json.dumps(summary))
    return 0


COMMANDS = (
    Command("generate", "Generate multiview images for prompts (with retrieved images), resumable and batched.",
            define_generate, run_generate),
)
