"""`class_images`: ImageNet-21K-style class folders for 2D mode (the paper uses 516 classes).

Layout of `manual_dir`:

    <manual_dir>/classes.txt        optional: one class per line, "<folder>" or "<folder><TAB><class name>";
                                    it fixes the label order and which folders are used (e.g. the 516 classes)
    <manual_dir>/<folder>/<image>   .jpg/.jpeg/.png/.webp/.bmp files

Without classes.txt every subfolder is a class, in sorted order, named after the folder ('_' -> ' ').
Every image is decoded once at build time; unreadable images and classes with fewer than `min_images_per_class`
good images are skipped and reported (log + metadata.json "skipped"). Images whose shorter side exceeds
`store_size` are downscaled and re-encoded (JPEG, quality 95); others are stored byte for byte.
Records are written grouped by class (see records.py), so the loader finds same-class retrievals without a scan.
"""

import dataclasses
import io

import ml_collections as mlc
import tensorflow_datasets as tfds
from etils import epath
from PIL import Image

from data_pipelines import records
from mvrag_jax.errors import MvragError


class BadClassListError(MvragError, ValueError):
    pass


@dataclasses.dataclass(eq=False)
class ClassImagesConfig(tfds.core.BuilderConfig):
    store_size: int = 256
    min_images_per_class: int = 2
    background: int = 127


def read_class_list(root: epath.Path) -> list[tuple[str, str]]:
    """(folder, name) per class in label order."""
    listing = root / "classes.txt"
    if not listing.exists():
        return [(p.name, p.name.replace("_", " ")) for p in sorted(root.iterdir()) if p.is_dir()]
    classes = []
    for number, line in enumerate(listing.read_text().splitlines(), 1):
        if not line.strip():
            continue
        folder, _, name = line.partition("\t")
        if not folder.strip():
            raise BadClassListError(f"{listing}:{number}: {line!r} has no folder name; use '<folder>[TAB<name>]'")
        classes.append((folder.strip(), name.strip() or folder.strip().replace("_", " ")))
    return classes


def _image_bytes(path: epath.Path, store_size: int, background: int) -> bytes:
    """Validated image bytes, downscaled if larger than needed; raises one of records.DECODE_ERRORS if unreadable."""
    with Image.open(path) as image:
        image.load()
        if min(image.size) <= store_size:
            return path.read_bytes()
        pixels = records.to_rgb(image, background)
    scale = store_size / min(pixels.shape[:2])
    size = (max(1, round(pixels.shape[1] * scale)), max(1, round(pixels.shape[0] * scale)))
    buffer = io.BytesIO()
    Image.fromarray(pixels).resize(size, Image.Resampling.BICUBIC, reducing_gap=2.0).save(buffer, "jpeg", quality=95)
    return buffer.getvalue()


class ClassImages(tfds.core.GeneratorBasedBuilder, skip_registration=True):
    """Class folders from manual_dir; see the module docstring for the layout."""

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "Initial release."}
    BUILDER_CONFIGS = [ClassImagesConfig(name="default")]
    MANUAL_DOWNLOAD_INSTRUCTIONS = __doc__
    url_infos = None  # nothing is downloaded; skips tfds' checksum lookup, which breaks on namespace packages

    def _info(self) -> tfds.core.DatasetInfo:
        return tfds.core.DatasetInfo(builder=self, description=self.builder_config.description,
                                     features=records.class_features(), metadata=tfds.core.MetadataDict(),
                                     disable_shuffling=True)

    def _split_generators(self, dl_manager):
        return {"train": self._generate_examples(epath.Path(dl_manager.manual_dir))}

    def _generate_examples(self, root: epath.Path):
        config = self.builder_config
        skipped = self.info.metadata.setdefault("skipped", [])
        names, counts, key = [], [], 0
        for folder, name in read_class_list(root):
            if not (root / folder).is_dir():
                records.report_skipped(skipped, folder, "class folder does not exist")
                continue
            images = []
            for path in records.image_files(root / folder):
                try:
                    images.append((path.stem, _image_bytes(path, config.store_size, config.background)))
                except records.DECODE_ERRORS as e:
                    records.report_skipped(skipped, f"{folder}/{path.name}", f"{type(e).__name__}: {e}")
            if len(images) < config.min_images_per_class:
                records.report_skipped(skipped, folder, f"{len(images)} readable images, need "
                                                        f"{config.min_images_per_class} (target + retrievals)")
                continue
            label = len(names)
            names.append(name)
            counts.append(len(images))
            for stem, data in images:
                yield key, {"image_id": f"{folder}/{stem}", "image": data, "label": label, "class_name": name}
                key += 1
        if not names:
            raise BadClassListError(f"no usable class folders in {root} ({len(skipped)} skipped, reasons in the log); "
                                    "see data_pipelines/class_images.py for the layout")
        self.info.metadata["class_names"] = names
        self.info.metadata["class_counts"] = {"train": counts}


def make_builder(cfg: mlc.ConfigDict, data_dir: str) -> ClassImages:
    params = dict(store_size=cfg.class_images.store_size, min_images_per_class=cfg.class_images.min_images_per_class,
                  background=cfg.background_level)
    name = f"s{params['store_size']}_{records.config_digest(params)}"
    return ClassImages(data_dir=data_dir, config=ClassImagesConfig(name=name, description=f"class_images {params}",
                                                                   **params))

