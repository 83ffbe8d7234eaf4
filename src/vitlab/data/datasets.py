"""Data sets as uint8 image tensors: MNIST, Fashion-MNIST, CIFAR-10/100, image folders and ``hf:`` sources.

Every source ends up as an :class:`ImageSplit` — images (N, C, H, W) uint8 plus int64
labels — held in memory, so an epoch never pays for decoding and batches are augmented
as tensors (see :mod:`vitlab.data.augment`). Folders too large for memory stream from
disk through a DataLoader instead, yielding the same uint8 batches.

Reading never writes into a data root that already holds the files: torchvision's
MNIST wants to extract its ``.gz`` files next to them, so they are linked into the cache
first; a folder of PNG/JPEG files is decoded once into a tensor file in the cache.
Hugging Face ``datasets`` (``hf:NAME``) are read by :mod:`vitlab.data.hf` into the same splits.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path

import torch
from filelock import FileLock
from torch.utils.data import Dataset

from vitlab.atomic import atomic_write
from vitlab.config import DATA_DIR_ENV, DataConfig

log = logging.getLogger(__name__)

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".webp", ".tif", ".tiff", ".ppm", ".pgm")

# Per-channel mean and std of the training pixels in [0, 1].
NORMALIZATION: dict[str, tuple[tuple[float, ...], tuple[float, ...]]] = {
    "mnist": ((0.1307,), (0.3081,)),
    "fashion_mnist": ((0.2860,), (0.3530,)),
    "cifar10": ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
    "cifar100": ((0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)),
    "imagefolder": ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),  # ImageNet statistics
}
DATASETS = tuple(NORMALIZATION)
HF_PREFIX = "hf:"  # --data.dataset hf:NAME: a Hugging Face `datasets` source (vitlab.data.hf)
GRAYSCALE_MODES = ("L", "1", "I;16")  # PIL modes decoded as one channel; anything else becomes RGB


class DataNotFoundError(FileNotFoundError):
    """The data set is not under the root and could not be downloaded."""


@dataclass
class ImageSplit:
    """Images and labels of one split: in memory (``images``) or streamed (``stream``)."""

    labels: torch.Tensor
    images: torch.Tensor | None = None
    stream: Dataset | None = None

    def __len__(self) -> int:
        return len(self.labels)

    def subset(self, index: torch.Tensor) -> ImageSplit:
        if self.images is not None:
            return ImageSplit(self.labels[index], images=self.images[index])
        return ImageSplit(self.labels[index], stream=torch.utils.data.Subset(self.stream, index.tolist()))


@dataclass
class ImageData:
    """A data set ready for training: splits, class names and preprocessing constants."""

    name: str
    train: ImageSplit
    val: ImageSplit
    classes: list[str]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    channels: int
    image_size: tuple[int, int]
    notes: dict = field(default_factory=dict)

    @property
    def num_classes(self) -> int:
        return len(self.classes)


def _seeded_perm(n: int, seed: int) -> torch.Tensor:
    return torch.randperm(n, generator=torch.Generator().manual_seed(seed))


def _split_off_validation(train: ImageSplit, fraction: float, seed: int):
    if not 0 < fraction < 1:
        raise ValueError(f"val_fraction must be between 0 and 1, got {fraction}")
    perm = _seeded_perm(len(train), seed)
    n_val = max(1, int(round(len(train) * fraction)))
    notes = {"validation": f"{n_val} images held out of the training set (seed {seed}, fraction {fraction})"}
    return train.subset(perm[n_val:]), train.subset(perm[:n_val]), notes


def _missing(name: str, root: Path, looked_for: list[str], how: str) -> DataNotFoundError:
    return DataNotFoundError(
        f"{name} not found under data root {root} (looked for: {', '.join(looked_for)}). {how} "
        f"Point --data.data_dir (or ${DATA_DIR_ENV}) at a root that holds it, or allow --data.download true "
        "on a machine with internet."
    )


# ----------------------------------------------------------------------------- MNIST family

_MNIST_FILES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")


def _load_mnist_like(cfg: DataConfig, name: str, splits: tuple[str, ...]):
    from torchvision import datasets

    cls = datasets.MNIST if name == "mnist" else datasets.FashionMNIST
    folder = cls.__name__  # torchvision's layout: <root>/MNIST/raw, <root>/FashionMNIST/raw
    root, cache = cfg.resolved_data_dir(), cfg.resolved_cache_dir() / "torchvision"
    raw = root / folder / "raw"
    if all((raw / f).exists() for f in _MNIST_FILES):
        read_root, download = root, False  # already extracted: torchvision only reads
    elif all((raw / f"{f}.gz").exists() for f in _MNIST_FILES):
        # torchvision extracts the .gz files next to themselves: do that in the cache, never in the root
        cached_raw = cache / folder / "raw"
        cached_raw.mkdir(parents=True, exist_ok=True)
        for f in _MNIST_FILES:
            link = cached_raw / f"{f}.gz"
            if not link.exists():
                with contextlib.suppress(FileExistsError):  # another process (a parallel sweep trial) made it
                    link.symlink_to((raw / f"{f}.gz").resolve())
        read_root, download = cache, True  # 'download' finds the files in place (md5-checked) and extracts
    elif cfg.download:
        read_root, download = root, True
    else:
        raise _missing(name, root, [str(raw / f) + "[.gz]" for f in _MNIST_FILES],
                       "Copy the four IDX files (torchvision layout) there.")
    # parallel processes sharing the cache extract one at a time (FileLock comes with torch)
    lock = FileLock(str(cache / f"{folder}.lock")) if read_root == cache else contextlib.nullcontext()
    try:
        out = {}
        for split in ("train", "val"):
            if split in splits:
                with lock:
                    ds = cls(str(read_root), train=split == "train", download=download)
                out[split] = ImageSplit(ds.targets.long(), images=ds.data.unsqueeze(1).contiguous())
        classes = list(cls.classes)
    except (RuntimeError, OSError) as exc:  # no internet, or a corrupt file
        raise _missing(name, root, [str(raw)], f"torchvision said: {exc}.") from exc
    return out.get("train"), out.get("val"), classes


# ----------------------------------------------------------------------------- CIFAR

_CIFAR_CLASSES_10 = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]


def _load_cifar(cfg: DataConfig, name: str, splits: tuple[str, ...], progress: bool):
    from torchvision import datasets

    cls = datasets.CIFAR10 if name == "cifar10" else datasets.CIFAR100
    root = cfg.resolved_data_dir()
    pickled = root / cls.base_folder  # cifar-10-batches-py / cifar-100-python (official download)
    png_folder = next((p for p in (root / name, root / name.upper()) if (p / "train").is_dir()), None)
    if png_folder is not None and not pickled.exists():
        train = _folder_split(png_folder / "train", cfg, None, None, progress) if "train" in splits else None
        test_dir = png_folder / "test" if (png_folder / "test").is_dir() else png_folder / "val"
        test = _folder_split(test_dir, cfg, None, None, progress) if "val" in splits else None
        classes = class_names(png_folder / "train")
        return train, test, classes
    if not pickled.exists() and not cfg.download:
        raise _missing(name, root, [str(pickled), str(root / name / "train")],
                       "Provide torchvision's official archive (extracted) or a PNG folder <root>/"
                       f"{name}/{{train,test}}/<class>/*.png.")
    try:
        out = {}
        for split in ("train", "val"):
            if split in splits:
                ds = cls(str(root), train=split == "train", download=not pickled.exists() and cfg.download)
                images = torch.from_numpy(ds.data).permute(0, 3, 1, 2).contiguous()
                out[split] = ImageSplit(torch.tensor(ds.targets, dtype=torch.long), images=images)
        classes = list(ds.classes)
    except (RuntimeError, OSError) as exc:
        raise _missing(name, root, [str(pickled)], f"torchvision said: {exc}.") from exc
    return out.get("train"), out.get("val"), classes


# ----------------------------------------------------------------------------- image folders


def class_names(folder: Path) -> list[str]:
    return sorted(d.name for d in folder.iterdir() if d.is_dir() and not d.name.startswith("."))


def folder_splits(cfg: DataConfig) -> tuple[Path, Path | None]:
    """An image folder's training folder and validation folder: ``train/`` and ``val/`` (valid, validation,
    test) when it has them, else the folder itself and no validation folder (``--data.val_fraction`` splits it)."""
    if not cfg.path:
        raise ValueError("--data.dataset imagefolder needs --data.path DIR (class sub-folders, or train/ and val/)")
    root = Path(cfg.path).expanduser()
    if not root.is_dir():
        raise DataNotFoundError(f"image folder {root} (--data.path) does not exist; pass the folder that holds the "
                                "class folders")
    if (root / "train").is_dir():
        return root / "train", next((root / v for v in ("val", "valid", "validation", "test") if (root / v).is_dir()), None)
    return root, None


def _load_image_folder(cfg: DataConfig, image_size: tuple[int, int] | None, splits: tuple[str, ...], progress: bool):
    train_dir, val_dir = folder_splits(cfg)
    if image_size is None:
        raise ValueError("image folders are resized to the model's img_size, which was not given")
    classes = class_names(train_dir)
    train = _folder_split(train_dir, cfg, image_size, classes, progress) if "train" in splits else None
    if val_dir is None and cfg.val_fraction <= 0:
        raise ValueError(f"{cfg.path} has no validation folder (train/ and val/ sub-folders): set --data.val_fraction "
                         "(e.g. 0.2) to hold out part of the training images")
    val = _folder_split(val_dir, cfg, image_size, classes, progress) if val_dir is not None and "val" in splits else None
    return train, val, classes


def _list_images(folder: Path, classes: list[str]) -> tuple[list[Path], list[int]]:
    files, labels = [], []
    for index, name in enumerate(classes):
        class_dir = folder / name
        if not class_dir.is_dir():
            continue
        found = sorted(p for p in class_dir.rglob("*") if p.suffix.lower() in IMAGE_EXTENSIONS)
        files += found
        labels += [index] * len(found)
    if not files:
        raise DataNotFoundError(
            f"no images ({', '.join(IMAGE_EXTENSIONS)}) found in class folders under {folder}; "
            "expected <folder>/<class name>/<image files>"
        )
    return files, labels


def resize_and_crop(image, image_size: tuple[int, int], crop_pct: float = 1.0, interpolation: str = "bicubic"):
    """Shorter side to ``min(image_size) / crop_pct``, then a center crop to ``image_size``.

    Works on PIL images (resampled by PIL, as timm's and torchvision's eval transforms do) and
    on uint8 tensors; returns the same kind.
    """
    from torchvision.transforms.v2 import functional as TF

    size = tuple(image.shape[-2:]) if isinstance(image, torch.Tensor) else image.size[::-1]  # PIL: (width, height)
    if tuple(size) == tuple(image_size) and crop_pct == 1.0:
        return image
    mode = TF.InterpolationMode.BICUBIC if interpolation == "bicubic" else TF.InterpolationMode.BILINEAR
    image = TF.resize(image, [round(min(image_size) / crop_pct)], interpolation=mode, antialias=True)
    return TF.center_crop(image, list(image_size))


class FolderImages(Dataset):
    """Decodes image files to uint8 tensors (C, H, W), resized to ``image_size`` when given.

    Resizing keeps the aspect ratio: the shorter side goes to the target (over ``crop_pct``),
    then a center crop.
    """

    def __init__(self, files: list[Path], labels: list[int], image_size: tuple[int, int] | None, mode: str,
                 crop_pct: float = 1.0, interpolation: str = "bicubic") -> None:
        self.files, self.labels, self.image_size, self.mode = files, labels, image_size, mode
        self.crop_pct, self.interpolation = crop_pct, interpolation

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        from PIL import Image
        from torchvision.transforms.v2 import functional as TF

        with Image.open(self.files[i]) as im:
            img = im.convert(self.mode)
            if self.image_size is not None:
                img = resize_and_crop(img, self.image_size, self.crop_pct, self.interpolation)
            return TF.pil_to_tensor(img), self.labels[i]


def _folder_split(folder: Path, cfg: DataConfig, image_size, classes: list[str] | None, progress: bool) -> ImageSplit:
    classes = classes or class_names(folder)
    files, labels = _list_images(folder, classes)
    from PIL import Image

    with Image.open(files[0]) as first:
        mode = "L" if first.mode in GRAYSCALE_MODES else "RGB"
        size = image_size or (first.height, first.width)
    dataset = FolderImages(files, labels, image_size, mode, cfg.crop_pct, cfg.interpolation)
    channels = 1 if mode == "L" else 3
    nbytes = len(files) * channels * size[0] * size[1]
    if nbytes > cfg.max_cache_gib * 2**30:
        log.info("%s: %d images stream from disk (%.1f GiB > max_cache_gib)", folder, len(files), nbytes / 2**30)
        return ImageSplit(torch.tensor(labels), stream=dataset)
    return ImageSplit(torch.tensor(labels), images=_cached_tensor(dataset, cfg, folder, size, progress))


def _cached_tensor(dataset: FolderImages, cfg: DataConfig, folder: Path, size, progress: bool) -> torch.Tensor:
    """Decode every image once and keep the result as a safetensors file in the cache."""
    fingerprint = hashlib.sha256(
        json.dumps([str(folder.resolve()), list(size), dataset.mode, dataset.crop_pct, dataset.interpolation, "pil",
                    len(dataset.files),
                    [(str(f.relative_to(folder)), f.stat().st_size, int(f.stat().st_mtime)) for f in dataset.files]])
        .encode()
    ).hexdigest()[:16]
    cache_file = cfg.resolved_cache_dir() / "tensors" / f"{folder.parent.name}-{folder.name}-{fingerprint}.safetensors"
    channels = 1 if dataset.mode == "L" else 3
    return _decode_once(dataset, cfg, cache_file, (channels, *size), f"decoding {folder} (once, cached)",
                        progress)


def _decode_once(dataset: Dataset, cfg: DataConfig, cache_file: Path, shape: tuple[int, ...], desc: str,
                 progress: bool) -> torch.Tensor:
    """Read ``cache_file``, or decode every (image, label) of ``dataset`` into a uint8 tensor and write it there atomically."""
    from safetensors.torch import load_file, save_file

    if cache_file.exists():
        try:
            return load_file(str(cache_file))["images"]
        except Exception as exc:  # a damaged cache file is rebuilt, not trusted
            log.warning("ignoring unreadable cache %s (%s)", cache_file, exc)
    from tqdm.auto import tqdm

    loader = torch.utils.data.DataLoader(dataset, batch_size=256, num_workers=min(cfg.num_workers, os.cpu_count() or 1))
    images = torch.empty((len(dataset), *shape), dtype=torch.uint8)
    i = 0
    for batch, _ in tqdm(loader, desc=desc, unit="batch", leave=False, disable=not progress):
        images[i : i + len(batch)] = batch
        i += len(batch)
    atomic_write(cache_file, lambda tmp: save_file({"images": images}, str(tmp)))  # a killed decode leaves no half cache
    return images
