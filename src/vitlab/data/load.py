"""``load_data``: any source by name (MNIST, Fashion-MNIST, CIFAR-10/100, an image folder, ``hf:``) as one :class:`ImageData`."""

from __future__ import annotations

import itertools

import torch

from vitlab.config import DataConfig
from vitlab.data.datasets import (
    DATASETS,
    HF_PREFIX,
    NORMALIZATION,
    STATS_SAMPLE,
    ImageData,
    ImageSplit,
    _load_cifar,
    _load_image_folder,
    _load_mnist_like,
    _seeded_perm,
    _split_off_validation,
    pixel_stats,
    take_subset,
)
from vitlab.data.hf import load_hf
from vitlab.data.loader import iterate_batches


def load_data(cfg: DataConfig, image_size: tuple[int, int] | None = None, seed: int = 0,
              splits: tuple[str, ...] = ("train", "val"), progress: bool = True, channels: int | None = None) -> ImageData:
    """Load the data set named by ``cfg``; ``image_size`` is the decode size for image folders and hf: sources
    (decoded once into a cache, with a progress bar unless ``progress`` is False); ``channels``: decode image
    folders as grayscale (1) or RGB (3), default: grayscale only when every sampled image is."""
    name = cfg.dataset.lower().replace("-", "_")
    at_source = cfg.val_fraction <= 0 and name in ("imagefolder", "cifar10", "cifar100")  # decode only what they take
    subsets = {"train": (cfg.train_subset, seed), "val": (cfg.val_subset, seed + 1)} if at_source else {}
    if cfg.dataset.startswith(HF_PREFIX):
        name = cfg.dataset
        loaded = load_hf(cfg, image_size, splits, seed, progress)
    elif name not in DATASETS:
        raise ValueError(f"unknown dataset {cfg.dataset!r}; choose one of {list(DATASETS)} (imagefolder needs --data.path) "
                         "or hf:NAME (Hugging Face datasets)")
    elif name in ("mnist", "fashion_mnist"):
        loaded = _load_mnist_like(cfg, name, splits)
    elif name in ("cifar10", "cifar100"):
        loaded = _load_cifar(cfg, name, splits, progress, subsets)
    elif name == "webdataset":
        from vitlab.data.shards import load_shards

        loaded = load_shards(cfg, image_size, splits, progress)
    else:
        loaded = _load_image_folder(cfg, image_size, splits, progress, channels, subsets)
    train, test, classes, notes = loaded.train, loaded.val, loaded.classes, dict(loaded.notes)

    if cfg.val_fraction > 0 and "train" in splits:
        train, test, split_notes = _split_off_validation(train, cfg.val_fraction, seed)
        notes.update(split_notes)
    elif test is None:
        raise ValueError(f"{cfg.dataset} has no validation split; set --data.val_fraction (e.g. 0.1)")
    if not at_source:
        train, test = take_subset(train, cfg.train_subset, seed), take_subset(test, cfg.val_subset, seed + 1)

    sample = train if train is not None else test
    if sample.images is not None:
        channels, size = sample.images.shape[1], tuple(sample.images.shape[2:])
    elif sample.shards is not None:
        channels, size = 1 if sample.shards.decoder.mode == "L" else 3, tuple(sample.shards.decoder.image_size)
    else:
        img, _ = sample.stream[0]
        channels, size = img.shape[0], tuple(img.shape[1:])
    if cfg.mean is not None and cfg.std is not None:  # e.g. the pretrained weights' normalisation
        mean, std = tuple(cfg.mean), tuple(cfg.std)
    else:
        mean, std = _normalization(name, sample, cfg)
        if name not in NORMALIZATION:
            which = "the first" if sample.shards is not None else "a seeded sample of"
            notes["normalization"] = (f"mean {mean}, std {std}: the {'training' if sample is train else 'validation'} "
                                      f"images' own ({which} {min(len(sample), STATS_SAMPLE)})")
        mean, std = tuple(cfg.mean or mean), tuple(cfg.std or std)
    return ImageData(name, train, test, classes, mean, std, channels, size, notes)  # type: ignore[arg-type]


def _normalization(name: str, split: ImageSplit, cfg: DataConfig) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """The named data sets' published statistics, else the split's own (:func:`pixel_stats`)."""
    if name in NORMALIZATION:
        return NORMALIZATION[name]
    batch = 64  # small batches: measuring adds a few MiB of memory, not a store's worth
    if split.shards is not None:  # the first images of the shards, in order
        first = torch.utils.data.DataLoader(split.shards, batch_size=batch)
        return pixel_stats(itertools.islice(first, -(-STATS_SAMPLE // batch)))
    if len(split) > STATS_SAMPLE:
        split = split.subset(_seeded_perm(len(split), 0)[:STATS_SAMPLE].sort().values)
    return pixel_stats(iterate_batches(split, batch, num_workers=cfg.num_workers))
