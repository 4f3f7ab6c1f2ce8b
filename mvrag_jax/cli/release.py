"""Subcommands on the official release layout: `convert`, `export`, `verify-reference`."""

import json
import time

from absl import flags

from mvrag_jax.cli.flags import Command
from mvrag_jax.errors import UsageError


def _define_ldm_sources(fv, what: str):
    flags.DEFINE_string("mvdream", None, f"MVDream {what}: sd-v2.1-base-4view.pt (or a .safetensors of it), or the "
                        "mvdream-sd2.1-diffusers folder.", flag_values=fv)
    flags.DEFINE_string("imagedream", None, f"ImageDream {what}: sd-v2.1-base-4view-ipmv.pt (or .safetensors), or "
                        "the imagedream-ipmv-diffusers folder.", flag_values=fv)
    flags.DEFINE_string("mvdream_config", None, "Official YAML the --mvdream file was built with (default: "
                        "mvdream/configs/sd-v2-base.yaml's values).", flag_values=fv)
    flags.DEFINE_string("imagedream_config", None, "Official YAML of the --imagedream file (default: "
                        "sd_v2_base_ipmv.yaml's values).", flag_values=fv)


def define_convert(fv):
    flags.DEFINE_string("release", None, "Official MV-RAG release folder (holds model_index.json); with --mvdream: "
                        "where the CLIP vision tower, DINOv2, tokenizer and scheduler come from.", flag_values=fv)
    _define_ldm_sources(fv, "checkpoint for the training init (paper C.2: frozen parts from MVDream, adapters "
                        "from ImageDream)")
    flags.DEFINE_string("out", None, "Output checkpoint folder (written atomically).", flag_values=fv)
    flags.DEFINE_bool("overwrite", False, "Replace --out if it exists.", flag_values=fv)
    flags.mark_flags_as_required(["out"], flag_values=fv)


def run_convert(fv, argv):
    from mvrag_jax.convert import convert_init, convert_release
    if fv.imagedream and not fv.mvdream:
        raise UsageError("--imagedream gives only the adapters; also pass --mvdream (the frozen UNet, VAE and text)")
    if not fv.mvdream and not fv.release:
        raise UsageError("pass --release DIR (an MV-RAG release), or --mvdream FILE [--imagedream FILE] "
                         "[--release DIR] for the training init")
    if fv.mvdream:
        out = convert_init(fv.mvdream, fv.out, imagedream=fv.imagedream, release=fv.release,
                           mvdream_config=fv.mvdream_config, imagedream_config=fv.imagedream_config,
                           overwrite=fv.overwrite)
    else:
        out = convert_release(fv.release, fv.out, overwrite=fv.overwrite)
    print(f"wrote {out}")
    return 0


def define_export(fv):
    flags.DEFINE_string("ckpt", None, "mvrag checkpoint folder (from `mvrag convert`), or a `mvrag train` --workdir "
                        "(its latest step, merged into the checkpoint the run started from).", flag_values=fv)
    flags.DEFINE_string("out", None, "Output release folder in the official layout (written atomically).",
                        flag_values=fv)
    flags.DEFINE_enum("dtype", "fp32", ["fp32", "fp16", "bf16"], "Stored weight dtype.", flag_values=fv)
    flags.DEFINE_bool("overwrite", False, "Replace --out if it exists.", flag_values=fv)
    flags.DEFINE_bool("ema", False, "Training workdir only: write the EMA of the trained weights (runs with "
                      "train.ema_decay > 0) in place of the trained weights themselves.", flag_values=fv)
    flags.mark_flags_as_required(["ckpt", "out"], flag_values=fv)


def run_export(fv, argv):
    from mvrag_jax.train.checkpoint import export
    print(f"wrote {export(fv.ckpt, fv.out, dtype=fv.dtype, overwrite=fv.overwrite, ema=fv.ema)}")
    return 0


def define_verify(fv):
    flags.DEFINE_string("release", None, "Release folder the cases were computed with.", flag_values=fv)
    _define_ldm_sources(fv, "checkpoint the cases were computed with (instead of --release; one of the two)")
    flags.DEFINE_string("cases", None, "Folder of reference cases (*.npz, see its README.md).", flag_values=fv)
    flags.DEFINE_bool("json", False, "Print one JSON object per case and line.", flag_values=fv)
    flags.DEFINE_multi_string("only", [], "Run only this case (repeatable).", flag_values=fv)
    flags.DEFINE_bool("require_all", False, "Also fail when a case is skipped.", flag_values=fv)
    flags.mark_flags_as_required(["cases"], flag_values=fv)


def run_verify(fv, argv):
    from mvrag_jax.verify import run_cases
    from mvrag_jax.verify.ldm_sources import SourceModels
    sources = [(m, getattr(fv, m)) for m in ("mvdream", "imagedream") if getattr(fv, m)]
    if len(sources) + bool(fv.release) != 1:
        raise UsageError("pass exactly one of --release, --mvdream, --imagedream (what the cases were computed with)")
    models = None if fv.release else SourceModels.open(sources[0][1], sources[0][0],
                                                       getattr(fv, f"{sources[0][0]}_config"))
    counts = {"pass": 0, "fail": 0, "skipped": 0}
    start = time.perf_counter()
    for result in run_cases(fv.release, fv.cases, only=fv.only or None, models=models):
        counts[result.status] += 1
        if fv.json:
            print(json.dumps({"case": result.case, "status": result.status, "max_abs_err": result.max_abs_err,
                              "tol": result.tol, "details": result.details}), flush=True)
        else:
            err = "" if result.max_abs_err is None else f"  max_abs_err={result.max_abs_err:.3g}"
            reason = f"  ({result.details.get('reason')})" if result.status == "skipped" else ""
            print(f"{result.status:7s} {result.case}{err}{reason}", flush=True)
    if not fv.json:  # JSON mode prints case objects only
        print(f"{counts['pass']} passed, {counts['fail']} failed, {counts['skipped']} skipped "
              f"in {time.perf_counter() - start:.1f} s (conversion and compiles included)")
    return 1 if counts["fail"] or (fv.require_all and counts["skipped"]) else 0


COMMANDS = (
    Command("convert", "Convert an official PyTorch release (or MVDream + ImageDream: the training init) into an mvrag "
            "checkpoint.", define_convert, run_convert),
    Command("export", "Write a checkpoint back in the official PyTorch release layout.", define_export, run_export),
    Command("verify-reference", "Check parity with the official outputs stored in a cases folder.", define_verify,
            run_verify),
)
