"""`mvrag bench unet|sample|train|reconstruct|retrieval|all|compare`: compile and call timings (mvrag_jax/bench/)."""

import json
import os

from absl import flags

from mvrag_jax.cli.flags import Command
from mvrag_jax.cli.reconstruct import define_lgm
from mvrag_jax.errors import UsageError


def define_bench(fv):
    flags.DEFINE_integer("batch_size", 1, "unet: objects per call (each has num_frames views).", flag_values=fv)
    flags.DEFINE_integer("steps", 5, "Timed calls after the compile.", flag_values=fv)
    flags.DEFINE_list("objects", ["1", "4"], "sample (and all): objects per call, one run each.", flag_values=fv)
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
    flags.DEFINE_bool("find_max_batch", False, "train (and all), on a GPU/TPU machine: the largest batch whose step "
                      "runs (doubling, then bisection) on the first --meshes mesh, with its figures.", flag_values=fv)
    flags.DEFINE_integer("max_batch", 1024, "train --find_max_batch: largest batch tried.", flag_values=fv)
    flags.DEFINE_integer("docs", 100_000, "retrieval: synthetic captions (bm25) or embeddings (dense) to index.",
                         flag_values=fv)
    flags.DEFINE_enum("kind", "bm25", ["bm25", "dense"], "retrieval: bm25 (captions, the real build_index/open_index "
                      "path) or dense (FAISS over CLIP-like embeddings, with recall@10 against exact search).",
                      flag_values=fv)
    flags.DEFINE_integer("num_shards", 1, "retrieval --kind bm25: build the index as this many shards.",
                         flag_values=fv)
    flags.DEFINE_integer("dim", 64, "retrieval --kind dense: embedding width (CLIP ViT-L/14: 768).", flag_values=fv)
    flags.DEFINE_integer("queries", 200, "retrieval: timed queries.", flag_values=fv)
    flags.DEFINE_string("workdir", None, "retrieval: folder for the temporary collection and index (default: the "
                        "system's temporary folder; 1M captions need ~1 GB).", flag_values=fv)
    define_lgm(fv)  # reconstruct: without --lgm, the released big config with random weights
    flags.DEFINE_integer("render_size", 256, "reconstruct: side of the 18 re-rendered views.", flag_values=fv)
    flags.DEFINE_bool("json", False, "retrieval: print the figures as one JSON object (default: one per line).",
                      flag_values=fv)


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
    from mvrag_jax.bench import train as bench_train
    if fv.meshes:
        _setup_fake_devices(bench_train.devices_needed(bench_train.parse_meshes(fv.meshes)))
    if fv.find_max_batch:
        return bench_train.find_max_batch(fv.config, fv.meshes, max_batch=fv.max_batch, steps=fv.steps,
                                          warmup=fv.warmup)
    return bench_train.bench_train(fv.config, fv.meshes, batch=fv.batch, steps=fv.steps, warmup=fv.warmup)


def _run_bench_suite(fv, argv):
    """`mvrag bench all` (every benchmark -> one JSON) and `mvrag bench compare A.json B.json`."""
    from mvrag_jax.bench import suite as bench_suite
    if argv[1] == "compare":
        if len(argv) != 4:
            raise UsageError(f"usage: mvrag bench compare A.json B.json; got {argv[2:]}")
        print(bench_suite.compare(argv[2], argv[3]))
        return 0
    path, failed = bench_suite.run_all(fv.config, fv.out, steps=fv.steps, only=argv[2:] or None,
                                       objects=tuple(int(n) for n in fv.objects), sample_steps=fv.sample_steps,
                                       prior_steps=fv.prior_steps, find_max_batch=fv.find_max_batch)
    print(f"wrote {path}" + (f"; failed: {', '.join(failed)}" if failed else ""))
    return 1 if failed else 0


def _run_bench_retrieval(fv):
    from mvrag_jax.bench import retrieval as bench_retrieval
    options = {"queries": fv.queries, "workdir": fv.workdir}
    options.update(num_shards=fv.num_shards) if fv.kind == "bm25" else options.update(dim=fv.dim)
    figures = bench_retrieval.bench_retrieval(fv.docs, fv.kind, **options)
    print(json.dumps(figures) if fv.json else "\n".join(f"{key}: {value}" for key, value in figures.items()))
    return 0


def _run_bench_reconstruct(fv):
    from mvrag_jax.bench import reconstruct as bench_reconstruct
    from mvrag_jax.models import lgm
    if fv.lgm:
        from mvrag_jax.convert.lgm import load_lgm
        config, params = load_lgm(fv.lgm, input_size=fv.lgm_input_size)
    else:
        config = lgm.LGMConfig(input_size=fv.lgm_input_size)
        params = bench_reconstruct.random_lgm(config)
    return bench_reconstruct.bench_reconstruct(config, params, steps=fv.steps, render_size=fv.render_size,
                                               weights=fv.lgm or "random")


def run_bench(fv, argv):
    if argv[1:2] in (["all"], ["compare"]):
        return _run_bench_suite(fv, argv)
    if argv[1:] == ["retrieval"]:
        return _run_bench_retrieval(fv)
    from mvrag_jax.bench import sample as bench_sample, unet as bench
    targets = {
        "unet": lambda: bench.bench_unet(fv.config, batch_size=fv.batch_size, steps=fv.steps),
        "sample": lambda: bench_sample.bench_sample(fv.config, objects=[int(n) for n in fv.objects], calls=fv.steps,
                                                    sample_steps=fv.sample_steps, prior_steps=fv.prior_steps,
                                                    release_dir=fv.release),
        "train": lambda: _run_bench_train(fv),
        "reconstruct": lambda: _run_bench_reconstruct(fv),
    }
    if len(argv) != 2 or argv[1] not in targets:
        raise UsageError(f"usage: mvrag bench {{{'|'.join(targets)}|retrieval}} [--config ...]; got {argv[1:]}")
    print(json.dumps(targets[argv[1]](), indent=1))
    return 0


COMMANDS = (
    Command("bench", "Time compiles and calls: `mvrag bench unet|sample|train|reconstruct`; retrieval at scale: `mvrag bench "
            "retrieval --docs N [--kind bm25|dense] [--json]`; every benchmark to one JSON: "
            "`mvrag bench all`; ratios of two such files: `mvrag bench compare A.json B.json`.",
            define_bench, run_bench, config=("tiny.py", "Model config (configs/*.py[:arg]).")),
)
