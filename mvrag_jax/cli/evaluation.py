"""`mvrag eval`: score a checkpoint or another method's views (mvrag_jax/eval/)."""

import sys

from absl import flags

from mvrag_jax.cli.flags import Command
from mvrag_jax.errors import UsageError
from mvrag_jax.cli.reconstruct import define_lgm


def define_eval(fv):
    flags.DEFINE_string("images", None, "Score another method's views: <images>/<prompt_id>/view_<i>.png.",
                        flag_values=fv)
    flags.DEFINE_string("ckpt", None, "Generate with this mvrag checkpoint, then score.", flag_values=fv)
    flags.DEFINE_string("dataset", "ood_eval", "ood_eval (the built tfds dataset) or a folder in its manual layout "
                        "(<prompt_id>/prompt.txt, retrieved/, reference/).", flag_values=fv)
    flags.DEFINE_string("out", None, "Output folder (written atomically): metrics.json, report.md, ...",
                        flag_values=fv)
    flags.DEFINE_enum("study", None, ["retrieval"], "retrieval: k in --ks with correct, shuffled and noisy "
                      "retrievals (needs --ckpt).", flag_values=fv)
    flags.DEFINE_integer("k", 4, "--ckpt: retrieved images per prompt (0: text-only).", flag_values=fv)
    flags.DEFINE_list("ks", ["0", "1", "2", "4"], "--study retrieval: the k values.", flag_values=fv)
    flags.DEFINE_list("seeds", ["0"], "--ckpt: seeds; each (prompt, seed) is one sample.", flag_values=fv)
    flags.DEFINE_integer("steps", 50, "--ckpt: DDIM steps of the main pass.", flag_values=fv)
    flags.DEFINE_float("guidance_scale", 5.0, "--ckpt: classifier-free guidance scale.", flag_values=fv)
    flags.DEFINE_integer("num_views", 4, "--ckpt: views per object.", flag_values=fv)
    flags.DEFINE_integer("batch_size", 4, "--ckpt: objects per pipeline call.", flag_values=fv)
    flags.DEFINE_string("clip_model", None, "CLIP similarity: a transformers CLIPModel folder; without it the metric "
                        "is reported missing.", flag_values=fv)
    flags.DEFINE_string("dinov2", None, "DINOv2 similarity and view consistency: a facebook/dinov2-base folder, a "
                        "release or a checkpoint (default with --ckpt: its own).", flag_values=fv)
    flags.DEFINE_string("inception", None, "FID and IS: pytorch-fid's pt_inception-2015-12-05 weights as "
                        ".safetensors (conversion command: mvrag_jax/eval/encoders.py).", flag_values=fv)
    flags.DEFINE_bool("rerender", False, "Also score the re-rendered setting (paper C.5): LGM 3D from each object's 4 "
                      "views, 18 renders on a circle (needs --lgm).", flag_values=fv)
    flags.DEFINE_float("elevation", 15.0, "--rerender: the views' generation elevation (degrees, > 0 = above).",
                       flag_values=fv)
    flags.DEFINE_integer("rerender_size", 256, "--rerender: render resolution.", flag_values=fv)
    define_lgm(fv)
    flags.DEFINE_bool("overwrite", False, "Replace --out if it exists.", flag_values=fv)
    flags.mark_flags_as_required(["out"], flag_values=fv)


def run_eval(fv, argv):
    from mvrag_jax.eval import run, study
    common = dict(out=fv.out, dataset=fv.dataset, seeds=[int(s) for s in fv.seeds], clip_model=fv.clip_model,
                  dinov2=fv.dinov2, inception=fv.inception, steps=fv.steps, guidance_scale=fv.guidance_scale,
                  num_views=fv.num_views, batch_size=fv.batch_size, overwrite=fv.overwrite)
    if fv.rerender != (fv.lgm is not None):
        raise UsageError("--rerender needs --lgm model_fp16_fixrot.safetensors (and --lgm is only used by it)")
    if fv.study == "retrieval":
        print(f"wrote {study.run_study(ckpt=fv.ckpt, ks=[int(k) for k in fv.ks], **common)}")
    else:
        out = run.run(images=fv.images, ckpt=fv.ckpt, k=fv.k, lgm=fv.lgm, lgm_input_size=fv.lgm_input_size,
                      elevation=fv.elevation, rerender_size=fv.rerender_size, **common)
        print(f"wrote {out}")
        _say_missing(out / "metrics.json")
    return 0


def _say_missing(metrics_json) -> None:
    """Name each metric the run could not compute, and why (its weights were not passed), on stderr."""
    import json
    missing = {name: entry["missing"] for name, entry in json.loads(metrics_json.read_text())["metrics"].items()
               if entry.get("missing")}
    for name, why in missing.items():
        print(f"mvrag eval: {name} not computed: {why}", file=sys.stderr)


COMMANDS = (
    Command("eval", "Score a checkpoint or another method's views: CLIP/DINOv2 similarity, consistency, FID, IS.",
            define_eval, run_eval),
)
