"""`mvrag data build|preview|bench`: the tfds datasets and grain loaders of data_pipelines/."""

import json
import shlex
import time

from absl import flags

from mvrag_jax.cli.flags import Command
from mvrag_jax.errors import UsageError


def define_data(fv):
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
    flags.DEFINE_bool("beam", False, "build: render on Apache Beam (DirectRunner here unless --beam_options names "
                      "another runner; synthetic_shapes so far). Records are identical to the plain build.",
                      flag_values=fv)
    flags.DEFINE_string("beam_options", "", "build --beam: Beam pipeline flags, e.g. \"--runner=DataflowRunner "
                        "--project=P --region=R --temp_location=gs://B/tmp --num_workers=32\" (data_pipelines/"
                        "build.py: beam_pipeline).", flag_values=fv)
    flags.DEFINE_integer("hosts", None, "build: write hosts x loader workers ArrayRecord shards per split, so every "
                         "loader worker of every host reads its own (default: tfds' size-based count).",
                         flag_values=fv)


def run_data(fv, argv):
    from data_pipelines import bench, build, preview, variants
    actions = ("build", "preview", "bench", "variants")
    if len(argv) != 2 or argv[1] not in actions:
        raise UsageError(f"usage: mvrag data {{{'|'.join(actions)}}} [--config configs/data.py:size=tiny]; "
                         f"got {argv[1:]}")
    flags.FLAGS.mark_as_parsed()  # grain reads absl's global flags when it starts loader worker processes
    if argv[1] == "build":
        if fv.beam_options and not fv.beam:
            raise UsageError("--beam_options only applies with --beam; add --beam or drop them")
        beam_options = shlex.split(fv.beam_options) if fv.beam else None
        print("\n".join(build.build_all(fv.config, fv.datasets, beam_options=beam_options, hosts=fv.hosts)))
    elif argv[1] == "preview":
        print(f"wrote {preview.write_preview(fv.config, fv.out, fv.batches)}")
    elif argv[1] == "variants":
        if not fv.renders:
            raise UsageError("mvrag data variants needs --renders (an mv_renders folder) and --ckpt or --release")
        settings = variants.Settings(per_object=fv.per_object, steps=fv.variant_steps, guidance=fv.guidance,
                                     fusion_weight=fv.fusion_weight, seed=fv.seed)
        print(json.dumps(variants.make_variants(fv.renders, ckpt=fv.ckpt, release=fv.release, settings=settings)))
    else:
        for mode in fv.modes:
            print(json.dumps(bench.bench(fv.config, mode, fv.steps)), flush=True)
    return 0


COMMANDS = (
    Command("data", "Build datasets, preview batches as a PNG, time the loader, or make semantic variants of renders: "
            "`mvrag data build|preview|bench|variants`.",
            define_data, run_data, config=("data.py:size=tiny", "Data config (configs/data.py[:arg]).")),
)
