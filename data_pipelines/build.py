"""Make and prepare the tfds builders a data config names; also `python -m data_pipelines.build`.

    python -m data_pipelines.build --config configs/data.py:size=tiny --config.data_dir /tmp/mvrag_data
    python -m data_pipelines.build --config configs/data.py:source=real --config.mv_renders.manual_dir /renders \
        --config.class_images.manual_dir /imagenet21k --datasets mode_3d,mode_2d
    python -m data_pipelines.build --config configs/data.py --config.ood_eval.manual_dir /ood --datasets ood_eval
    mvrag data build --beam --beam_options="--direct_num_workers=2 --direct_running_mode=multi_processing" --hosts 4

The synthetic dataset builds itself on first use; manual datasets need their `manual_dir` once, then read from
`data_dir`. Builds write ArrayRecord files with tfds and need no TensorFlow.
"""

import contextlib
import io
import os
import sys

import ml_collections as mlc
import tensorflow_datasets as tfds
from absl import app, flags, logging
from ml_collections import config_flags

import configs
from data_pipelines import class_images, mv_renders, ood_eval, synthetic_shapes
from mvrag_jax.errors import MvragError, UsageError

MODE_DATASETS = {"mode_3d": ("synthetic_shapes", "mv_renders"), "mode_2d": ("synthetic_shapes", "class_images")}


class DatasetNotBuiltError(MvragError, FileNotFoundError):
    pass


def make_builder(cfg: mlc.ConfigDict, dataset: str, kind: str = "multiview") -> tfds.core.DatasetBuilder:
    """The builder for `dataset` with the sizes of `cfg`; `kind` (multiview | classes) only matters for synthetic."""
    data_dir = os.path.expanduser(cfg.data_dir)
    if dataset == "synthetic_shapes":
        return synthetic_shapes.make_builder(cfg, kind, data_dir)
    if dataset == "mv_renders":
        return mv_renders.make_builder(cfg, data_dir)
    if dataset == "class_images":
        return class_images.make_builder(cfg, data_dir)
    if dataset == "ood_eval":
        return ood_eval.make_builder(cfg, data_dir)
    raise UsageError(f"unknown dataset {dataset!r}; choose synthetic_shapes, mv_renders, class_images or ood_eval")


def manual_dir(cfg: mlc.ConfigDict, dataset: str) -> str:
    return "" if dataset == "synthetic_shapes" else os.path.expanduser(cfg[dataset].manual_dir)


def prepare(cfg: mlc.ConfigDict, dataset: str, kind: str = "multiview", *, beam_options: list[str] | None = None,
            num_shards: int | None = None) -> tfds.core.DatasetBuilder:
    """The builder, built first if needed (synthetic: always possible; manual datasets: from their manual_dir).
    `beam_options` (a list, maybe empty): build on Apache Beam with these pipeline flags (see `beam_pipeline`);
    `num_shards`: write exactly this many ArrayRecord files per split (default: tfds' size-based count)."""
    builder = make_builder(cfg, dataset, kind)
    if builder.is_prepared():
        return builder
    folder = manual_dir(cfg, dataset)
    if dataset != "synthetic_shapes" and not folder:
        raise DatasetNotBuiltError(
            f"{dataset} is not built in {builder.data_dir} and --config.{dataset}.manual_dir is empty; set it to the "
            f"folder described in data_pipelines/{dataset}.py and run python -m data_pipelines.build")
    options = {}
    if beam_options is not None:
        if dataset != "synthetic_shapes":
            raise UsageError(f"--beam builds synthetic_shapes so far; {dataset} still builds on one host (drop --beam)")
        options["beam_options"] = beam_pipeline(beam_options)
        builder.use_beam = True
    logging.info("building %s into %s%s", dataset, builder.data_dir, " on Apache Beam" if options else "")
    download_config = tfds.download.DownloadConfig(manual_dir=folder or None, num_shards=num_shards, **options)
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):  # tfds prints "Downloading and preparing" (nothing downloads) to stdout
        builder.download_and_prepare(file_format="array_record", download_config=download_config)
    for line in printed.getvalue().splitlines():
        logging.info("tfds: %s", line)  # quiet unless --verbose (mvrag_jax/cli/flags.py configure_logging)
    return builder


def beam_pipeline(flags_: list[str]):
    """Beam PipelineOptions from command-line flags (default runner: DirectRunner, on this host). On Dataflow:
        --runner=DataflowRunner --project=P --region=R --temp_location=gs://B/tmp --staging_location=gs://B/stage
        --requirements_file=requirements.txt --setup_file=./setup.py --num_workers=N --max_num_workers=M
    with --config.data_dir=gs://B/data so workers write where the trainers read; DirectRunner takes
    --direct_num_workers=K --direct_running_mode=multi_processing to use K local processes."""
    try:
        from apache_beam.options.pipeline_options import PipelineOptions
    except ImportError as e:
        raise ImportError("--beam needs Apache Beam: pip install -r requirements-beam.txt (apache-beam==2.71.0, the "
                          "newest release that accepts our pillow and pyarrow pins)") from e
    return PipelineOptions(flags_)


def loader_shards(cfg: mlc.ConfigDict, hosts: int) -> int:
    """ArrayRecord files per split so that every loader worker of every host reads its own: hosts x workers."""
    if hosts < 1:
        raise ValueError(f"--hosts {hosts}: pass the number of hosts that will read the dataset (>= 1)")
    return hosts * max(1, int(cfg.loader.num_workers))


def mode_dataset(cfg: mlc.ConfigDict, mode_key: str) -> tuple[str, str]:
    """(dataset, kind) that `cfg.mode_3d` / `cfg.mode_2d` reads."""
    dataset = cfg[mode_key].dataset
    if dataset not in MODE_DATASETS[mode_key]:
        raise UsageError(f"--config.{mode_key}.dataset={dataset!r}; choose one of {MODE_DATASETS[mode_key]}")
    return dataset, "multiview" if mode_key == "mode_3d" else "classes"


def build_all(cfg: mlc.ConfigDict, names: list[str], *, beam_options: list[str] | None = None,
              hosts: int | None = None) -> list[str]:
    """Prepare each of `names` (mode_3d, mode_2d, ood_eval or a dataset name); one report line per dataset, then
    one per skipped input (the first 20). `hosts`: write hosts x loader workers shards per split."""
    num_shards = None if hosts is None else loader_shards(cfg, hosts)
    lines = []
    for name in names:
        dataset, kind = mode_dataset(cfg, name) if name in MODE_DATASETS else (name, "multiview")
        builder = prepare(cfg, dataset, kind, beam_options=beam_options, num_shards=num_shards)
        skipped = builder.info.metadata.get("skipped", [])
        sizes = {split: info.num_examples for split, info in builder.info.splits.items()}
        shards = {split: info.num_shards for split, info in builder.info.splits.items()}
        lines.append(f"{name}: {dataset} -> {builder.data_dir} {sizes} in {shards} shards; {len(skipped)} inputs "
                     "skipped")
        lines += [f"  skipped {item['item']}: {item['reason']}" for item in skipped[:20]]
    return lines


def main(argv) -> int:
    del argv
    print("\n".join(build_all(flags.FLAGS.config, flags.FLAGS.datasets)))
    return 0


if __name__ == "__main__":
    config_flags.DEFINE_config_file(
        "config", configs.resolve("data.py"), "Data config (configs/data.py[:arg]).")
    flags.DEFINE_list("datasets", ["mode_3d", "mode_2d"],
                      "What to build: mode_3d, mode_2d, ood_eval, or a dataset name.")
    sys.exit(app.run(main))
