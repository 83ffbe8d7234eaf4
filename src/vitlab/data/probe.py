"""What a data set decides about the model, read before any image is decoded: classes, channels, image size.

:func:`vitlab.resolve.resolve_config` asks this before training, so the model's head, input
channels and input size can follow the data unless the user set them. Image folders are read
from the file headers of a sample of images (a few per class); ``hf:`` sources from their
features and a sample of images; webdataset shards from a scan of their labels and their first
images; the built-in sets are known.
"""

from __future__ import annotations

import itertools
import statistics
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from vitlab.config import DataConfig
from vitlab.data.datasets import (
    DATASETS,
    HF_PREFIX,
    IMAGE_EXTENSIONS,
    SKIP_HINT,
    UNREADABLE,
    BadImageError,
    DataNotFoundError,
    class_names,
    colour_mode,
    folder_splits,
    refuse_unusable_classes,
)

SAMPLE_PER_CLASS = 8
SAMPLE_MAX = 96


@dataclass(frozen=True)
class DataFacts:
    """What the data says; ``None`` where it cannot be known before loading."""

    num_classes: int | None
    channels: int | None
    image_size: tuple[int, int] | None
    """The images' typical (median) height and width."""
    augment: str
    """The augmentation that suits these images: digits for small grayscale, crop_flip for photos."""


BUILTIN_FACTS = {
    "mnist": DataFacts(10, 1, (28, 28), "digits"),
    "fashion_mnist": DataFacts(10, 1, (28, 28), "flip"),
    "cifar10": DataFacts(10, 3, (32, 32), "crop_flip"),
    "cifar100": DataFacts(100, 3, (32, 32), "crop_flip"),
}


@lru_cache(maxsize=32)
def probe_data(cfg: DataConfig) -> DataFacts:
    """The facts of ``cfg``'s data set (cached per configuration)."""
    name = cfg.dataset.lower().replace("-", "_")
    if cfg.dataset.startswith(HF_PREFIX):
        from vitlab.data.hf import probe_hf  # `datasets` is imported only for hf: sources

        classes, channels, sizes = probe_hf(cfg)
        return _facts(classes, channels, sizes)
    if name in BUILTIN_FACTS:
        return BUILTIN_FACTS[name]
    if name == "webdataset":
        from vitlab.data.shards import find_shards, scan, shard_mode

        train, val = find_shards(cfg)
        mode, sizes = shard_mode(train)
        return _facts(max(scan(train, cfg).num_classes, scan(val, cfg).num_classes), 1 if mode == "L" else 3, sizes)
    if name != "imagefolder":
        raise ValueError(f"unknown dataset {cfg.dataset!r}; choose one of {list(DATASETS)} (imagefolder needs --data.path) "
                         "or hf:NAME (Hugging Face datasets)")
    train_dir, _ = folder_splits(cfg)
    classes = class_names(train_dir)
    sizes, modes, found = _sample_headers(train_dir, classes)
    if not any(found.values()):
        raise DataNotFoundError(f"no images ({', '.join(IMAGE_EXTENSIONS)}) found in class folders under {train_dir}; "
                                "expected <folder>/<class name>/<image files>")
    refuse_unusable_classes(train_dir, classes, found)
    if not sizes:
        raise BadImageError(f"none of the images sampled under {train_dir} can be read; check the files ({SKIP_HINT} "
                            "once the rest are readable)")
    channels = 1 if colour_mode(modes) == "L" else 3
    return _facts(len(classes), channels, sizes)


def _facts(num_classes: int, channels: int, sizes: list[tuple[int, int]]) -> DataFacts:
    size = (int(statistics.median(h for h, _ in sizes)), int(statistics.median(w for _, w in sizes)))
    small_gray = channels == 1 and min(size) <= 32
    return DataFacts(num_classes, channels, size, "digits" if small_gray else "crop_flip")


def _sample_headers(folder: Path, classes: list[str]) -> tuple[list[tuple[int, int]], list[str], dict[str, int]]:
    """(height, width) and PIL mode of up to SAMPLE_PER_CLASS images per class (SAMPLE_MAX in all), read from the
    file headers, and for every class whether it holds an image (1) or not (0)."""
    from PIL import Image

    sizes, modes, found = [], [], {}
    for name in classes:
        files = (p for p in sorted((folder / name).rglob("*")) if p.suffix.lower() in IMAGE_EXTENSIONS)
        taken = list(itertools.islice(files, SAMPLE_PER_CLASS if len(sizes) < SAMPLE_MAX else 1))
        found[name] = int(bool(taken))
        for path in taken if len(sizes) < SAMPLE_MAX else []:
            try:
                with Image.open(path) as im:
                    sizes.append((im.height, im.width))
                    modes.append(im.mode)
            except UNREADABLE:  # an unreadable file: the loader reports it; the sample skips it
                continue
    return sizes, modes, found
