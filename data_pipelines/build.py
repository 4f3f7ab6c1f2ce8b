"""Make and prepare the tfds builders a data config names; also `python -m data_pipelines.build`.

    python -m data_pipelines.build --config configs/data.py:size=tiny --config.data_dir /tmp/mvrag_data
    python -m data_pipelines.build --config configs/data.py:source=real --config.mv_renders.manual_dir /renders \
        --config.class_images.manual_dir /imagenet21k --datasets mode_3d,mode_2d
    python -m data_pipelines.build --config configs/data.py --config.ood_eval.manual_dir /ood --datasets ood_eval

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


def prepare(cfg: mlc.ConfigDict, dataset: str, kind: str = "multiview") -> tfds.core.DatasetBuilder:
    """The builder, built first if needed (synthetic: always possible; manual datasets: from their manual_dir)."""
    builder = make_builder(cfg, dataset, kind)
    if builder.is_prepared():
        return builder
    folder = manual_dir(cfg, dataset)
    if dataset != "synthetic_shapes" and not folder:
        raise DatasetNotBuiltError(
            f"{dataset} is not built in {builder.data_dir} and --config.{dataset}.manual_dir is empty; set it to the "
            f"folder described in data_pipelines/{dataset}.py and run python -m data_pipelines.build")
    logging.info("building %s into %s", dataset, builder.data_dir)
    download_config = tfds.download.DownloadConfig(manual_dir=folder) if folder else None
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):  # tfds prints "Downloading and preparing" (nothing downloads) to stdout
        builder.download_and_prepare(file_format="array_record", download_config=download_config)
    for line in printed.getvalue().splitlines():
        logging.info("tfds: %s", line)  # quiet unless --verbose (mvrag_jax/cli/flags.py configure_logging)
    return builder


def mode_dataset(cfg: mlc.ConfigDict, mode_key: str) -> tuple[str, str]:
    """(dataset, kind) that `cfg.mode_3d` / `cfg.mode_2d` reads."""
    dataset = cfg[mode_key].dataset
    if dataset not in MODE_DATASETS[mode_key]:
        raise UsageError(f"--config.{mode_key}.dataset={dataset!r}; choose one of {MODE_DATASETS[mode_key]}")
    return dataset, "multiview" if mode_key == "mode_3d" else "classes"


def build_all(cfg: mlc.ConfigDict, names: list[str]) -> list[str]:
    """Prepare each of `names` (mode_3d, mode_2d, ood_eval or a dataset name); one report line per dataset, then
    one per skipped input (the first 20)."""
    lines = []
    for name in names:
        dataset, kind = mode_dataset(cfg, name) if name in MODE_DATASETS else (name, "multiview")
        builder = prepare(cfg, dataset, kind)
        skipped = builder.info.metadata.get("skipped", [])
        sizes = {split: info.num_examples for split, info in builder.info.splits.items()}
        lines.append(f"{name}: {dataset} -> {builder.data_dir} {sizes}; {len(skipped)} inputs skipped")
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
