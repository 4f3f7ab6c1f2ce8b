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
    flags.DEFINE_enum("study", None, ["retrieval", "retrievers"], "retrieval: k in --ks with correct, shuffled and "
                      "noisy retrievals (needs --ckpt). retrievers: Precision@5 of BM25, CLIP text->image, CLIP "
                      "text->text and SigLIP text->image over --collection (the paper's Table 4; "
                      "mvrag_jax/eval/retrievers.py).", flag_values=fv)
    flags.DEFINE_string("collection", None, "--study retrievers: the combined collection (.jsonl of image, caption, "
                        "group), the evaluation set's images among distractors.", flag_values=fv)
    flags.DEFINE_bool("tables", False, "Write the paper's Table 1 (--dataset + --images/--baseline) and Table 3 "
                      "(--ind_eval + --ind_images/--ind_baseline) beside its numbers (mvrag_jax/eval/tables.py).",
                      flag_values=fv)
    flags.DEFINE_multi_string("baseline", [], "--tables: NAME=DIR, another method's views scored the same way "
                              "(repeatable).", flag_values=fv)
    flags.DEFINE_string("ind_eval", None, "IND-Eval folder (<object>/prompt.txt, views/, retrieved/, masks/; "
                        "mvrag_jax/eval/ind_eval.py): PSNR, SSIM, LPIPS, CLIP and SigLIP (Table 3).", flag_values=fv)
    flags.DEFINE_string("ind_images", None, "Our views of the IND-Eval objects: <dir>/<object_id>/view_<i>.png.",
                        flag_values=fv)
    flags.DEFINE_multi_string("ind_baseline", [], "NAME=DIR, another method's IND-Eval views (repeatable).",
                              flag_values=fv)
    flags.DEFINE_string("lpips", None, "LPIPS: folder with vgg16.safetensors and lpips_vgg.safetensors (conversion "
                        "commands: mvrag_jax/eval/reconstruction.py).", flag_values=fv)
    flags.DEFINE_string("siglip", None, "SigLIP text-image alignment (and the retriever study): a transformers "
                        "SiglipModel folder.", flag_values=fv)
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
    flags.DEFINE_string("ir", None, "IR (instance retrieval) similarity: a folder with the GUIE model's weights as "
                        "model.safetensors (conversion command: mvrag_jax/eval/ir.py); without it the metric is "
                        "reported missing.", flag_values=fv)
    flags.DEFINE_enum("ir_output", "embedding", ["embedding", "projection"], "IR embedding scored: the 64-d fc1 "
                      "embedding the GUIE model was trained and judged on (default) or its 1024-d CLIP projection.",
                      flag_values=fv)
    flags.DEFINE_bool("overwrite", False, "Replace --out if it exists.", flag_values=fv)
    flags.mark_flags_as_required(["out"], flag_values=fv)


def run_eval(fv, argv):
    from mvrag_jax.eval import run, study
    if fv.study == "retrievers":
        from mvrag_jax.eval import retrievers
        out = retrievers.run_study(out=fv.out, collection=fv.collection, clip_model=fv.clip_model, siglip=fv.siglip,
                                   overwrite=fv.overwrite)
        print(f"wrote {out}")
        return 0
    if fv.tables or fv.ind_eval:
        return _run_tables(fv)
    common = dict(out=fv.out, dataset=fv.dataset, seeds=[int(s) for s in fv.seeds], clip_model=fv.clip_model,
                  dinov2=fv.dinov2, inception=fv.inception, ir=fv.ir, ir_output=fv.ir_output, steps=fv.steps,
                  guidance_scale=fv.guidance_scale, num_views=fv.num_views, batch_size=fv.batch_size, overwrite=fv.overwrite)
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


def _run_tables(fv) -> int:
    from mvrag_jax.eval import tables
    if fv.ckpt:
        raise UsageError("--tables scores views from folders; generate ours first (mvrag eval --ckpt CKPT --out RUN "
                         "writes RUN/views) and pass --images RUN/views")
    dataset = fv.dataset if (fv.images or fv.baseline) else None
    out = tables.run_tables(
        out=fv.out, dataset=dataset, ours=fv.images, baselines=tables.parse_named(fv.baseline, "baseline"),
        ind_eval_dir=fv.ind_eval, ind_ours=fv.ind_images,
        ind_baselines=tables.parse_named(fv.ind_baseline, "ind_baseline"), clip_model=fv.clip_model,
        dinov2=fv.dinov2, inception=fv.inception, ir=fv.ir, ir_output=fv.ir_output, lpips=fv.lpips,
        siglip=fv.siglip, rerender=rerender_hook(fv), overwrite=fv.overwrite)
    print(f"wrote {out}")
    return 0


def rerender_hook(fv):
    """The re-renderer of Table 1's right half (tables.Rerender: a folder of <id>/view_<i>.png -> a folder of the
    LGM re-renders in the same layout), or None without --rerender: the columns are then reported missing."""
    if not fv.rerender:
        return None
    if fv.lgm is None:
        raise UsageError("--rerender needs --lgm model_fp16_fixrot.safetensors")
    from mvrag_jax.eval.rerender import rerender_folder
    return lambda views, out: rerender_folder(views, out, fv.lgm, elevation=fv.elevation,
                                              input_size=fv.lgm_input_size, render_size=fv.rerender_size)


def _say_missing(metrics_json) -> None:
    """Name each metric the run could not compute, and why (its weights were not passed), on stderr."""
    import json
    missing = {name: entry["missing"] for name, entry in json.loads(metrics_json.read_text())["metrics"].items()
               if entry.get("missing")}
    for name, why in missing.items():
        print(f"mvrag eval: {name} not computed: {why}", file=sys.stderr)


COMMANDS = (
    Command("eval", "Score a checkpoint or another method's views: CLIP/DINOv2/IR similarity, consistency, FID, IS.",
            define_eval, run_eval),
)
