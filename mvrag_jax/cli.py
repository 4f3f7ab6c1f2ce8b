"""`mvrag`: the command line. Each subcommand only parses flags and calls one library function.

    mvrag convert --release DIR --out CKPT_DIR
    mvrag export --ckpt CKPT_DIR|WORKDIR --out DIR [--dtype fp32|fp16|bf16]
    mvrag verify-reference --release DIR --cases DIR [--json] [--only NAME ...] [--require-all]
    mvrag generate --ckpt DIR|--release DIR --prompt TEXT|--prompts FILE [--retrieved DIR|--index IDX] --out DIR
    mvrag bench unet|sample --config configs/tiny.py
    mvrag bench train --config configs/train.py:size=tiny --meshes data=1 --meshes data=2,fsdp=4 [--batch 8]
    mvrag bench all --out FILE.json | mvrag bench compare A.json B.json
    mvrag data build|preview|bench --config configs/data.py:size=tiny --config.data_dir DIR
    mvrag data variants --ckpt CKPT --renders DIR --per_object 2
    mvrag index --collection FILE.jsonl --out IDX [--kind bm25|dense --clip-model DIR]
    mvrag retrieve --index IDX|--folder DIR --prompt TEXT [--k 4] [--out DIR]
    mvrag eval (--ckpt DIR | --images DIR) --dataset ood_eval|DIR --out DIR [--clip_model DIR] [--dinov2 DIR] ...
    mvrag train --config configs/train.py:size=tiny --workdir DIR [--config.train.steps=100 ...]
    mvrag plan --config configs/train.py --topology v5e:2x4 --mesh data=1,fsdp=8 --batch 24 [--find_max_batch]
Run `mvrag <subcommand> --help` for its flags. Multi-word flags take dashes or underscores (--require-all,
--require_all); `--config configs/NAME.py` finds the packaged configs from any directory.
"""

import dataclasses
import json
import os
import sys
import time
from typing import Callable

from absl import flags
from ml_collections import config_flags

import configs
from mvrag_jax import cli_flags
from mvrag_jax.convert import CheckpointError, CheckpointKeyError, ReleaseError

# Errors a user can fix from the message alone: printed without a traceback, exit code 2.
_USER_ERRORS = (CheckpointError, CheckpointKeyError, ReleaseError, FileNotFoundError, ValueError)


@dataclasses.dataclass(frozen=True)
class Command:
    name: str
    summary: str
    define: Callable[[flags.FlagValues], None]
    run: Callable[[flags.FlagValues, list[str]], int]
    config: tuple[str, str] | None = None  # (default spec in configs/, help) of a `--config` flag, if any


def _define_runtime(fv: flags.FlagValues) -> None:
    flags.DEFINE_string("compile_cache_dir", "~/.cache/mvrag_jax/xla",
                        "Persistent XLA compilation cache (reused across runs); 'none' disables it.", flag_values=fv)


def _define_processes(fv: flags.FlagValues) -> None:
    """Flags to join a multi-process job (train and generate): mvrag_jax/distributed.py."""
    flags.DEFINE_string("coordinator", None, "Multi-process: HOST:PORT of process 0 (omit on one host).",
                        flag_values=fv)
    flags.DEFINE_integer("num_processes", None, "Multi-process: how many processes join.", flag_values=fv)
    flags.DEFINE_integer("process_id", None, "Multi-process: this process's id, 0..num_processes-1.", flag_values=fv)
    flags.DEFINE_bool("multihost", False, "Join a Cloud TPU pod slice (coordinator, count and id auto-detected).",
                      flag_values=fv)
    flags.DEFINE_float("init_timeout", 300.0, "Seconds to wait for every process to connect before exiting with a "
                       "message naming the missing one.", flag_values=fv)


def _use_cpu_collectives(fv: flags.FlagValues) -> None:
    if fv.num_processes and fv.num_processes > 1:  # CPU collectives between processes (tests, CPU clusters)
        import jax
        jax.config.update("jax_cpu_collectives_implementation", "gloo")


def _setup_jax(fv: flags.FlagValues) -> None:
    """Process-wide JAX settings live here, at the CLI entry, and nowhere else."""
    import jax
    if fv.compile_cache_dir.lower() != "none":
        jax.config.update("jax_compilation_cache_dir", os.path.expanduser(fv.compile_cache_dir))
        jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)
    jax.config.update("jax_threefry_partitionable", True)


# ---- convert -------------------------------------------------------------------------------------------------------
def _define_convert(fv):
    flags.DEFINE_string("release", None, "Official MV-RAG release folder (holds model_index.json).", flag_values=fv)
    flags.DEFINE_string("out", None, "Output checkpoint folder (written atomically).", flag_values=fv)
    flags.DEFINE_bool("overwrite", False, "Replace --out if it exists.", flag_values=fv)
    flags.mark_flags_as_required(["release", "out"], flag_values=fv)


def _run_convert(fv, argv):
    from mvrag_jax.convert import convert_release
    out = convert_release(fv.release, fv.out, overwrite=fv.overwrite)
    print(f"wrote {out}")
    return 0


# ---- export --------------------------------------------------------------------------------------------------------
def _define_export(fv):
    flags.DEFINE_string("ckpt", None, "mvrag checkpoint folder (from `mvrag convert`), or a `mvrag train` --workdir "
                        "(its latest step, merged into the checkpoint the run started from).", flag_values=fv)
    flags.DEFINE_string("out", None, "Output release folder in the official layout (written atomically).",
                        flag_values=fv)
    flags.DEFINE_enum("dtype", "fp32", ["fp32", "fp16", "bf16"], "Stored weight dtype.", flag_values=fv)
    flags.DEFINE_bool("overwrite", False, "Replace --out if it exists.", flag_values=fv)
    flags.mark_flags_as_required(["ckpt", "out"], flag_values=fv)


def _run_export(fv, argv):
    from mvrag_jax.train.checkpoint import export
    print(f"wrote {export(fv.ckpt, fv.out, dtype=fv.dtype, overwrite=fv.overwrite)}")
    return 0


# ---- verify-reference ----------------------------------------------------------------------------------------------
def _define_verify(fv):
    flags.DEFINE_string("release", None, "Release folder the cases were computed with.", flag_values=fv)
    flags.DEFINE_string("cases", None, "Folder of reference cases (*.npz, see its README.md).", flag_values=fv)
    flags.DEFINE_bool("json", False, "Print one JSON object per case and line.", flag_values=fv)
    flags.DEFINE_multi_string("only", [], "Run only this case (repeatable).", flag_values=fv)
    flags.DEFINE_bool("require_all", False, "Also fail when a case is skipped.", flag_values=fv)
    flags.mark_flags_as_required(["release", "cases"], flag_values=fv)


def _run_verify(fv, argv):
    from mvrag_jax.verify import run_cases
    counts = {"pass": 0, "fail": 0, "skipped": 0}
    start = time.perf_counter()
    for result in run_cases(fv.release, fv.cases, only=fv.only or None):
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


# ---- generate ------------------------------------------------------------------------------------------------------
def _define_generate(fv):
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
    flags.DEFINE_integer("batch", 1, "Objects per device call (rounded up to a multiple of the local devices).",
                         flag_values=fv)
    flags.DEFINE_string("out", None, "Output folder: one subfolder per object (views, grid.png, record.json); "
                        "a rerun skips complete objects.", flag_values=fv)
    _define_processes(fv)  # every process takes its own share of the objects and writes to the shared --out
    flags.mark_flags_as_required(["out"], flag_values=fv)


def _run_generate(fv, argv):
    from mvrag_jax import distributed, generate
    _use_cpu_collectives(fv)
    distributed.initialize(fv.coordinator, fv.num_processes, fv.process_id, timeout_s=fv.init_timeout,
                           auto=fv.multihost)
    settings = generate.Settings(steps=fv.steps, prior_steps=fv.prior_steps, guidance=fv.guidance,
                                 elevation=fv.elevation, dtype=fv.dtype, use_prior=not fv.no_prior,
                                 fusion_weight=fv.fusion_weight, k=fv.k, require_retrieval=fv.require_retrieval,
                                 batch=fv.batch)
    summary = generate.run(out=fv.out, ckpt=fv.ckpt, release=fv.release, prompt=fv.prompt, prompts=fv.prompts,
                           retrieved=fv.retrieved, index=fv.index, seeds=fv.seeds, settings=settings)
    print(json.dumps(summary))
    return 0


# ---- bench ---------------------------------------------------------------------------------------------------------
def _define_bench(fv):
    flags.DEFINE_integer("batch_size", 1, "unet: objects per call (each has num_frames views).", flag_values=fv)
    flags.DEFINE_integer("steps", 5, "Timed calls after the compile.", flag_values=fv)
    flags.DEFINE_list("objects", ["1", "4"], "sample: objects per call, one run each.", flag_values=fv)
    flags.DEFINE_integer("sample_steps", 50, "sample: DDIM steps of the main pass.", flag_values=fv)
    flags.DEFINE_integer("prior_steps", 10, "sample: DDIM steps of the prior pass.", flag_values=fv)
    flags.DEFINE_string("release", None, "sample: release folder for tokenizer, scheduler and processors (default: "
                        "the bundled tiny release, which matches configs/tiny.py).", flag_values=fv)
    flags.DEFINE_string("out", "bench.json", "all: the JSON file to write.", flag_values=fv)
    flags.DEFINE_multi_string("meshes", None, "train: meshes to time, e.g. data=1 (one device), data=8, "
                              "data=2,fsdp=4 (axes not named are 1; -1 = the remaining devices); repeat the flag or "
                              "separate meshes by spaces. On CPU, fake devices are made for the largest. Default: the "
                              "config's mesh block.", flag_values=fv)
    flags.DEFINE_integer("batch", None, "train: global objects per step (default: the config's train.batch_size); "
                         "a multiple of data*fsdp of every mesh.", flag_values=fv)
    flags.DEFINE_integer("warmup", 1, "train: untimed calls between the compile and the timed ones.", flag_values=fv)
    flags.DEFINE_bool("find_max_batch", False, "train, on a GPU/TPU machine: the largest batch whose step runs "
                      "(doubling, then bisection) on the first --meshes mesh, with its figures.", flag_values=fv)
    flags.DEFINE_integer("max_batch", 1024, "train --find_max_batch: largest batch tried.", flag_values=fv)


def _setup_fake_devices(count: int) -> None:
    """CPU meshes of `count` devices need that many fake CPU devices, which only a JAX that has not started can
    make. Ignored by GPU/TPU backends; an explicit XLA_FLAGS device count wins."""
    import jax
    if count > 1 and "xla_force_host_platform_device_count" not in os.environ.get("XLA_FLAGS", ""):
        try:
            jax.config.update("jax_num_cpu_devices", count)
        except RuntimeError:  # JAX already started (main() called in-process): too few devices -> bench's error
            pass


def _run_bench_train(fv):
    from mvrag_jax import bench_train
    if fv.meshes:
        _setup_fake_devices(bench_train.devices_needed(bench_train.parse_meshes(fv.meshes)))
    if fv.find_max_batch:
        return bench_train.find_max_batch(fv.config, fv.meshes, max_batch=fv.max_batch, steps=fv.steps,
                                          warmup=fv.warmup)
    return bench_train.bench_train(fv.config, fv.meshes, batch=fv.batch, steps=fv.steps, warmup=fv.warmup)


def _run_bench_suite(fv, argv):
    """`mvrag bench all` (every benchmark -> one JSON) and `mvrag bench compare A.json B.json`."""
    from mvrag_jax import bench_suite
    if argv[1] == "compare":
        if len(argv) != 4:
            raise ValueError(f"usage: mvrag bench compare A.json B.json; got {argv[2:]}")
        print(bench_suite.compare(argv[2], argv[3]))
        return 0
    path, failed = bench_suite.run_all(fv.config, fv.out, steps=fv.steps, only=argv[2:] or None)
    print(f"wrote {path}" + (f"; failed: {', '.join(failed)}" if failed else ""))
    return 1 if failed else 0


def _run_bench(fv, argv):
    if argv[1:2] in (["all"], ["compare"]):
        return _run_bench_suite(fv, argv)
    from mvrag_jax import bench, bench_sample
    targets = {
        "unet": lambda: bench.bench_unet(fv.config, batch_size=fv.batch_size, steps=fv.steps),
        "sample": lambda: bench_sample.bench_sample(fv.config, objects=[int(n) for n in fv.objects], calls=fv.steps,
                                                    sample_steps=fv.sample_steps, prior_steps=fv.prior_steps,
                                                    release_dir=fv.release),
        "train": lambda: _run_bench_train(fv),
    }
    if len(argv) != 2 or argv[1] not in targets:
        raise ValueError(f"usage: mvrag bench {{{'|'.join(targets)}}} [--config ...]; got {argv[1:]}")
    print(json.dumps(targets[argv[1]](), indent=1))
    return 0


# ---- data ----------------------------------------------------------------------------------------------------------
def _define_data(fv):
    flags.DEFINE_list("datasets", ["mode_3d", "mode_2d"], "build: mode_3d, mode_2d, ood_eval or a dataset name.",
                      flag_values=fv)
    flags.DEFINE_string("out", "/tmp/mvrag_preview.png", "preview: PNG to write.", flag_values=fv)
    flags.DEFINE_integer("batches", 2, "preview: batches to show.", flag_values=fv)
    flags.DEFINE_list("modes", ["3d", "2d", "mixed"], "bench: modes to time.", flag_values=fv)
    flags.DEFINE_integer("steps", 20, "bench: timed batches per mode.", flag_values=fv)
    flags.DEFINE_string("ckpt", None, "variants: mvrag checkpoint with an image branch.", flag_values=fv)
    flags.DEFINE_string("release", None, "variants: official release folder, instead of --ckpt.", flag_values=fv)
    flags.DEFINE_string("renders", None, "variants: mv_renders folder; writes <object>/variants/.", flag_values=fv)
    flags.DEFINE_integer("per_object", 2, "variants: variants per object.", flag_values=fv)
    flags.DEFINE_integer("variant_steps", 50, "variants: DDIM steps.", flag_values=fv)
    flags.DEFINE_float("guidance", 5.0, "variants: classifier-free guidance scale.", flag_values=fv)
    flags.DEFINE_float("fusion_weight", 0.5, "variants: text weight (image: 1.5 - it).", flag_values=fv)
    flags.DEFINE_integer("seed", 0, "variants: seed of the views and samples.", flag_values=fv)


def _run_data(fv, argv):
    from data_pipelines import bench, build, preview, variants
    actions = ("build", "preview", "bench", "variants")
    if len(argv) != 2 or argv[1] not in actions:
        raise ValueError(f"usage: mvrag data {{{'|'.join(actions)}}} [--config configs/data.py:size=tiny]; "
                         f"got {argv[1:]}")
    flags.FLAGS.mark_as_parsed()  # grain reads absl's global flags when it starts loader worker processes
    if argv[1] == "build":
        print("\n".join(build.build_all(fv.config, fv.datasets)))
    elif argv[1] == "preview":
        print(f"wrote {preview.write_preview(fv.config, fv.out, fv.batches)}")
    elif argv[1] == "variants":
        if not fv.renders:
            raise ValueError("mvrag data variants needs --renders (an mv_renders folder) and --ckpt or --release")
        settings = variants.Settings(per_object=fv.per_object, steps=fv.variant_steps, guidance=fv.guidance,
                                     fusion_weight=fv.fusion_weight, seed=fv.seed)
        print(json.dumps(variants.make_variants(fv.renders, ckpt=fv.ckpt, release=fv.release, settings=settings)))
    else:
        for mode in fv.modes:
            print(json.dumps(bench.bench(fv.config, mode, fv.steps)), flush=True)
    return 0


# ---- index / retrieve ----------------------------------------------------------------------------------------------
def _define_index(fv):
    flags.DEFINE_string("collection", None, 'Captioned collection: a .jsonl of {"image": path relative to the file\'s '
                        'folder, "caption": text} lines.', flag_values=fv)
    flags.DEFINE_string("out", None, "Index folder to write (atomically).", flag_values=fv)
    flags.DEFINE_enum("kind", "bm25", ["bm25", "dense"], "bm25: captions, the paper's Pyserini settings (k1=0.9, "
                      "b=0.4); dense: CLIP text -> image similarity.", flag_values=fv)
    flags.DEFINE_string("clip_model", None, "dense: a transformers CLIPModel folder (config.json, *.safetensors, "
                        "tokenizer files).", flag_values=fv)
    flags.DEFINE_bool("overwrite", False, "Replace --out if it exists.", flag_values=fv)
    flags.mark_flags_as_required(["collection", "out"], flag_values=fv)


def _run_index(fv, argv):
    from mvrag_jax.retrieval import build_index
    print(f"wrote {build_index(fv.collection, fv.out, kind=fv.kind, clip_model=fv.clip_model, overwrite=fv.overwrite)}")
    return 0


def _define_retrieve(fv):
    flags.DEFINE_string("index", None, "Index folder from `mvrag index` (or use --folder).", flag_values=fv)
    flags.DEFINE_string("folder", None, "A folder of images, returned in name order (the official simple retriever).",
                        flag_values=fv)
    flags.DEFINE_string("prompt", None, "Text prompt.", flag_values=fv)
    flags.DEFINE_integer("k", 4, "Images to retrieve (the paper uses 4).", flag_values=fv)
    flags.DEFINE_string("out", None, "Copy the hits here as 00_<name>, 01_<name>, ... (a new or empty folder).",
                        flag_values=fv)
    flags.DEFINE_string("clip_model", None, "dense index: use this CLIPModel folder instead of the one it was built "
                        "with.", flag_values=fv)
    flags.mark_flags_as_required(["prompt"], flag_values=fv)


def _run_retrieve(fv, argv):
    from mvrag_jax.retrieval import show_hits
    print(show_hits(fv.prompt, fv.k, folder=fv.folder, index=fv.index, clip_model=fv.clip_model, out=fv.out))
    return 0


# ---- eval ----------------------------------------------------------------------------------------------------------
def _define_eval(fv):
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
    flags.DEFINE_bool("overwrite", False, "Replace --out if it exists.", flag_values=fv)
    flags.mark_flags_as_required(["out"], flag_values=fv)


def _run_eval(fv, argv):
    from mvrag_jax.eval import run, study
    common = dict(out=fv.out, dataset=fv.dataset, seeds=[int(s) for s in fv.seeds], clip_model=fv.clip_model,
                  dinov2=fv.dinov2, inception=fv.inception, steps=fv.steps, guidance_scale=fv.guidance_scale,
                  num_views=fv.num_views, batch_size=fv.batch_size, overwrite=fv.overwrite)
    if fv.study == "retrieval":
        print(f"wrote {study.run_study(ckpt=fv.ckpt, ks=[int(k) for k in fv.ks], **common)}")
    else:
        print(f"wrote {run.run(images=fv.images, ckpt=fv.ckpt, k=fv.k, **common)}")
    return 0


# ---- train ---------------------------------------------------------------------------------------------------------
def _define_train(fv):
    flags.DEFINE_string("workdir", None, "Run folder: checkpoints/, metrics.jsonl, tb/, loss.png, data/. A run resumes "
                        "from its latest checkpoint.", flag_values=fv)
    _define_processes(fv)
    flags.mark_flags_as_required(["workdir"], flag_values=fv)


def _run_train(fv, argv):
    from absl import logging
    from mvrag_jax.train import loop
    _use_cpu_collectives(fv)
    logging.set_verbosity(logging.INFO)
    logging.get_absl_logger().addFilter(lambda record: "/orbax/" not in record.pathname)  # per-save chatter
    flags.FLAGS.mark_as_parsed()  # grain reads absl's global flags when it starts loader worker processes
    summary = loop.launch(fv.config, fv.workdir, coordinator=fv.coordinator, num_processes=fv.num_processes,
                          process_id=fv.process_id, init_timeout_s=fv.init_timeout, multihost=fv.multihost)
    print(json.dumps(summary), flush=True)
    return 0


# ---- plan ----------------------------------------------------------------------------------------------------------
def _define_plan(fv):
    flags.DEFINE_string("topology", "cpu:8", "Target slice: v5e:2x4, v4:2x2x1, v5p:2x2x2, v6e:4x4, a GCP accelerator "
                        "type (v5litepod-8, v4-8) or cpu:N (fake CPU devices). TPU targets need libtpu "
                        "(requirements-tpu.txt), not a TPU.", flag_values=fv)
    flags.DEFINE_string("mesh", None, "data=1,fsdp=8[,tensor=1]; default: the config's mesh block.", flag_values=fv)
    flags.DEFINE_integer("batch", None, "Global batch (objects); default: config train.batch_size.", flag_values=fv)
    flags.DEFINE_list("programs", ["train", "sample"], "Programs to compile: train (the train step), sample (the "
                      "jitted DDIM + CFG loop, one object, 50 steps).", flag_values=fv)
    flags.DEFINE_bool("find_max_batch", False, "Search the largest global batch whose train step fits the chip's HBM "
                      "(doubling, then bisection; multiples of data*fsdp).", flag_values=fv)
    flags.DEFINE_integer("max_batch", 4096, "--find_max_batch: largest batch tried.", flag_values=fv)
    flags.DEFINE_bool("json", False, "Print the report as one line of JSON.", flag_values=fv)
    flags.DEFINE_string("plan_cache_dir", "~/.cache/mvrag_jax/plan", "Reports cached by config, topology, mesh, batch, "
                        "versions and source hash; 'none' disables. (The XLA compile cache is always off for plans: "
                        "it cannot serve compile-only TPU devices.)", flag_values=fv)


def _setup_plan(fv) -> None:
    """Plan-only process settings, before any backend starts: fake CPU devices or libtpu's compile-only setup."""
    import jax
    from mvrag_jax import platforms
    from mvrag_jax.train.topology import parse_topology
    topology = parse_topology(fv.topology)
    if topology.platform == "cpu":
        jax.config.update("jax_num_cpu_devices", max(topology.num_devices, 1))
    else:
        os.environ.update(platforms.compile_only_tpu_env(topology.accelerator_type))
    jax.config.update("jax_enable_compilation_cache", False)


def _run_plan(fv, argv):
    from mvrag_jax.train import plan
    _setup_plan(fv)
    mesh = plan.parse_mesh(fv.mesh) if fv.mesh else {k: int(fv.config.mesh[k]) for k in ("data", "fsdp", "tensor")}
    cache = None if fv.plan_cache_dir.lower() == "none" else fv.plan_cache_dir
    if fv.find_max_batch:
        on_probe = lambda p: print(f"batch {p['batch']}: {p['memory_gib']} GiB per chip, "
                                   f"{'fits' if p['fits'] else 'does not fit'}", file=sys.stderr, flush=True)
        result = plan.find_max_batch(fv.config, fv.topology, mesh, fv.max_batch, cache_dir=cache, on_probe=on_probe)
        print(json.dumps(result) if fv.json else f"largest batch that fits: {result['max_batch']}"
              + ("" if result["plan"] is None else "\n" + plan.format_report(result["plan"])))
        return 0
    batch = fv.batch or int(fv.config.train.batch_size)
    report = plan.plan(fv.config, fv.topology, mesh, batch, programs=fv.programs, cache_dir=cache)
    print(json.dumps(report) if fv.json else f"{plan.format_report(report)}\n{json.dumps(report)}")
    return 0


COMMANDS = {c.name: c for c in (
    Command("convert", "Convert an official PyTorch release into an mvrag checkpoint.", _define_convert, _run_convert),
    Command("export", "Write a checkpoint back in the official PyTorch release layout.", _define_export, _run_export),
    Command("verify-reference", "Check parity with the official outputs stored in a cases folder.", _define_verify,
            _run_verify),
    Command("generate", "Generate multiview images for prompts (with retrieved images), resumable and batched.",
            _define_generate, _run_generate),
    Command("data", "Build datasets, preview batches as a PNG, time the loader, or make semantic variants of renders: "
            "`mvrag data build|preview|bench|variants`.",
            _define_data, _run_data, config=("data.py:size=tiny", "Data config (configs/data.py[:arg]).")),
    Command("bench", "Time compiles and calls: `mvrag bench unet|sample|train`; every benchmark to one JSON: "
            "`mvrag bench all`; ratios of two such files: `mvrag bench compare A.json B.json`.",
            _define_bench, _run_bench, config=("tiny.py", "Model config (configs/*.py[:arg]).")),
    Command("index", "Build a BM25 or dense (CLIP) retrieval index from a captioned image collection.", _define_index,
            _run_index),
    Command("retrieve", "Retrieve k images for a prompt from an index or a folder; list them, optionally copy them.",
            _define_retrieve, _run_retrieve),
    Command("eval", "Score a checkpoint or another method's views: CLIP/DINOv2 similarity, consistency, FID, IS.",
            _define_eval, _run_eval),
    Command("train", "Train (or resume) a run in --workdir; SIGTERM saves and exits 0.", _define_train, _run_train,
            config=("train.py:size=tiny", "Train config (configs/train.py[:arg]).")),
    Command("plan", "Compile the train step and sampler for a TPU slice from shapes (no weights, no TPU): per-chip "
            "memory, FLOPs, compile time.", _define_plan, _run_plan,
            config=("train.py", "Train config (configs/train.py[:size=...]).")),
)}


def _usage() -> str:
    lines = [__doc__.strip(), "", "subcommands:"]
    lines += [f"  {name:18s} {c.summary}" for name, c in COMMANDS.items()]
    return "\n".join(lines)


def _flag_values(command: Command, args: list[str]) -> tuple[flags.FlagValues, list[str]]:
    """`command`'s flags, defined, and `args` with dashed names and config paths normalised (not parsed yet)."""
    fv = flags.FlagValues()
    command.define(fv)
    _define_runtime(fv)
    args = cli_flags.normalise_argv(args, fv)
    if command.config:
        args = cli_flags.resolve_config_args(args)
        argv = [f"mvrag {command.name}"] + args  # config_flags reads `--config.x` overrides from this list
        config_flags.DEFINE_config_file("config", configs.resolve(command.config[0]), command.config[1],
                                        flag_values=fv, lock_config=True, sys_argv=argv)
    return fv, args


def parse(command: Command, args: list[str]) -> tuple[flags.FlagValues, list[str]]:
    """Define `command`'s flags and parse `args` (after the subcommand); returns (flags, positional args).

    Raises flags.Error for unknown or missing flags, FileNotFoundError for a config file that does not exist.
    """
    fv, args = _flag_values(command, args)
    return fv, fv([f"mvrag {command.name}"] + args)


def command_help(command: Command) -> str:
    fv, _ = _flag_values(command, [])
    return f"mvrag {command.name}: {command.summary}\n\n{cli_flags.dashed_help(fv.get_help(), fv)}"


def _select_platforms() -> None:
    """Keep a machine with libtpu but no TPU on CPU (else every command prints libtpu's init errors)."""
    from mvrag_jax.platforms import default_platforms
    platforms = default_platforms()
    if platforms is not None:
        import jax
        jax.config.update("jax_platforms", platforms)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv if argv is None else argv)
    _select_platforms()
    # transformers (used for tokenizers only) otherwise announces at import that PyTorch is absent.
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    if len(argv) < 2 or argv[1] in ("-h", "--help", "help"):
        print(_usage())
        return 0
    if argv[1] not in COMMANDS:
        print(f"mvrag: unknown subcommand {argv[1]!r}\n\n{_usage()}", file=sys.stderr)
        return 2
    command = COMMANDS[argv[1]]
    if any(a in ("-h", "--help", "-help") for a in argv[2:]):
        print(command_help(command))
        return 0
    try:
        fv, positional = parse(command, argv[2:])
    except flags.Error as e:
        print(f"mvrag {command.name}: {e}\nRun `mvrag {command.name} --help` for the flags.", file=sys.stderr)
        return 2
    except FileNotFoundError as e:
        print(f"mvrag {command.name}: error: {e}", file=sys.stderr)
        return 2
    _setup_jax(fv)
    try:
        return command.run(fv, positional)
    except _USER_ERRORS as e:
        print(f"mvrag {command.name}: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
