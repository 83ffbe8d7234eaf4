"""``load_data``: any source by name (MNIST, Fashion-MNIST, CIFAR-10/100, an image folder, ``hf:``) as one :class:`ImageData`."""

from __future__ import annotations

from vitlab.config import DataConfig
from vitlab.data.datasets import (
    DATASETS,
    HF_PREFIX,
    NORMALIZATION,
    ImageData,
    _load_cifar,
    _load_image_folder,
    _load_mnist_like,
    _split_off_validation,
    take_subset,
)
from vitlab.data.hf import load_hf


def load_data(cfg: DataConfig, image_size: tuple[int, int] | None = None, seed: int = 0,
              splits: tuple[str, ...] = ("train", "val"), progress: bool = True, channels: int | None = None) -> ImageData:
    """Load the data set named by ``cfg``; ``image_size`` is the decode size for image folders and hf: sources
    (decoded once into a cache, with a progress bar unless ``progress`` is False); ``channels``: decode image
    folders as grayscale (1) or RGB (3), default: grayscale only when every sampled image is."""
    name = cfg.dataset.lower().replace("-", "_")
    notes: dict = {}
    stats = None
    at_source = cfg.val_fraction <= 0 and name in ("imagefolder", "cifar10", "cifar100")  # decode only what they take
    subsets = {"train": (cfg.train_subset, seed), "val": (cfg.val_subset, seed + 1)} if at_source else {}
    if cfg.dataset.startswith(HF_PREFIX):
        name = cfg.dataset
        train, test, classes, notes, stats = load_hf(cfg, image_size, splits, seed, progress)
    elif name not in DATASETS:
        raise ValueError(f"unknown dataset {cfg.dataset!r}; choose one of {list(DATASETS)} (imagefolder needs --data.path) "
                         "or hf:NAME (Hugging Face datasets)")
    elif name in ("mnist", "fashion_mnist"):
        train, test, classes = _load_mnist_like(cfg, name, splits)
    elif name in ("cifar10", "cifar100"):
        train, test, classes = _load_cifar(cfg, name, splits, progress, subsets)
    else:
        train, test, classes = _load_image_folder(cfg, image_size, splits, progress, channels, subsets)

    if cfg.val_fraction > 0 and "train" in splits:
        train, test, split_notes = _split_off_validation(train, cfg.val_fraction, seed)
        notes = {**notes, **split_notes}
    elif test is None:
        raise ValueError(f"{cfg.dataset} has no validation split; set --data.val_fraction (e.g. 0.1)")
    if not at_source:
        train, test = take_subset(train, cfg.train_subset, seed), take_subset(test, cfg.val_subset, seed + 1)

    sample = train if train is not None else test
    if sample.images is not None:
        channels, size = sample.images.shape[1], tuple(sample.images.shape[2:])
    else:
        img, _ = sample.stream[0]
        channels, size = img.shape[0], tuple(img.shape[1:])
    mean, std = stats or NORMALIZATION[name]
    if cfg.mean is not None or cfg.std is not None:  # e.g. the pretrained weights' normalisation
        mean, std = tuple(cfg.mean or mean), tuple(cfg.std or std)
    return ImageData(name, train, test, classes, mean, std, channels, size, notes)  # type: ignore[arg-type]
