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
import math
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO, NamedTuple

import torch
from filelock import FileLock
from PIL import Image
from torch.utils.data import Dataset

from vitlab.config import DATA_DIR_ENV, DataConfig
from vitlab.data.store import StoredImages, decode_once

log = logging.getLogger(__name__)

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".webp", ".tif", ".tiff", ".ppm", ".pgm")

# Per-channel mean and std of the training pixels in [0, 1] of the named data sets; image folders and hf: sources
# get their training images' own (pixel_stats), whether decoded into a store or streamed.
NORMALIZATION: dict[str, tuple[tuple[float, ...], tuple[float, ...]]] = {
    "mnist": ((0.1307,), (0.3081,)),
    "fashion_mnist": ((0.2860,), (0.3530,)),
    "cifar10": ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
    "cifar100": ((0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)),
}
DATASETS = (*NORMALIZATION, "imagefolder", "webdataset")
STATS_SAMPLE = 2000  # images of a seeded sample that pixel_stats measures
HF_PREFIX = "hf:"  # --data.dataset hf:NAME: a Hugging Face `datasets` source (vitlab.data.hf)
HIGH_BIT_MODES = ("I;16", "I;16L", "I;16B", "I;16N", "I", "F")  # 16-bit, 32-bit and float grayscale: scaled to 8 bits
GRAYSCALE_MODES = ("L", "1", "LA", *HIGH_BIT_MODES)  # PIL modes decoded as one channel; anything else becomes RGB


class DataNotFoundError(FileNotFoundError):
    """The data set is not under the root and could not be downloaded."""


class BadImageError(ValueError):
    """Image files that cannot be decoded (truncated, empty, not an image, larger than PIL's safety limit)."""


UNREADABLE = (OSError, SyntaxError, ValueError, Image.DecompressionBombError)  # what PIL raises for a broken file


SKIP_HINT = "--data.skip_bad_images true leaves such files out (with a warning that lists them)"


def open_image(path: str | Path | BinaryIO, mode: str | None = None):
    """``path`` (a file, or an open binary stream such as a shard's bytes) decoded by PIL, upright (its EXIF
    orientation applied), as an 8-bit image in ``mode`` ("L" or "RGB") when given: 16-bit and float images are scaled
    to 0..255, not clipped. Raises :class:`BadImageError` naming the file when it cannot be decoded."""
    from PIL import ImageOps

    try:
        with Image.open(path) as im:
            im.load()
            im = ImageOps.exif_transpose(im)  # as the camera held it: phone photos are stored sideways with a tag
            return _eight_bit(im).convert(mode) if mode else im
    except UNREADABLE as exc:
        raise BadImageError(f"{path} cannot be decoded ({type(exc).__name__}: {exc})") from exc


def _eight_bit(image):
    """16-bit (I;16), 32-bit integer (I) and float (F) grayscale as 8-bit L, scaled by the range the mode holds."""
    if image.mode not in HIGH_BIT_MODES:
        return image
    import numpy as np
    from PIL import Image

    pixels = np.asarray(image, dtype=np.float64)
    top = pixels.max(initial=0.0)
    if image.mode.startswith("I;16"):
        scale = 65535.0
    elif image.mode == "F" and top <= 1.0:
        scale = 1.0
    else:  # I or F holding integers: 16-bit values when any exceeds 8 bits
        scale = 65535.0 if top > 255 else 255.0
    return Image.fromarray(np.clip(np.round(pixels * 255.0 / scale), 0, 255).astype(np.uint8), mode="L")


@dataclass
class ImageSplit:
    """Images and labels of one split: in memory or in a store (``images``), decoded by index every epoch
    (``stream``), or read from shards (``shards``)."""

    labels: torch.Tensor
    images: torch.Tensor | StoredImages | None = None  # in memory, or a decoded-image store read by index
    stream: Dataset | None = None  # decoded by index every epoch
    shards: Any = None  # a vitlab.data.shards.ShardSplit: read in order, no index (labels unknown until read)

    def __len__(self) -> int:
        return len(self.shards) if self.shards is not None else len(self.labels)

    def subset(self, index: torch.Tensor) -> ImageSplit:
        """The images at ``index`` (a store's stay on disk)."""
        if self.shards is not None:
            raise ValueError("a split streamed from shards has no index to select from")
        if isinstance(self.images, StoredImages):
            return ImageSplit(self.labels[index], images=self.images.take(index))
        if self.images is not None:
            return ImageSplit(self.labels[index], images=self.images[index])
        return ImageSplit(self.labels[index], stream=torch.utils.data.Subset(self.stream, index.tolist()))


class Splits(NamedTuple):
    """What every source's loader returns: its splits (None when not asked for), class names and notes."""

    train: ImageSplit | None
    val: ImageSplit | None
    classes: list[str]
    notes: dict = {}


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


def take_subset(split: ImageSplit | None, count: int | None, seed: int) -> ImageSplit | None:
    """The first ``count`` images of a seeded permutation of ``split`` (all of it when ``count`` is None)."""
    if split is None or count is None:
        return split
    return split.subset(_seeded_perm(len(split), seed)[:count])


def pixel_stats(batches: Iterable[tuple[torch.Tensor, torch.Tensor]]) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean and std (pixels in [0, 1], 4 decimals; MNIST's: 0.1307, 0.3081) of uint8 image batches."""
    total = squares = None
    count = 0
    for images, _ in batches:
        for chunk in images.split(16):  # a few MiB of floats at a time: the memory stays at a batch
            x = chunk.float()
            sums, sums_sq = x.sum((0, 2, 3), dtype=torch.float64), x.square().sum((0, 2, 3), dtype=torch.float64)
            total, squares = (sums, sums_sq) if total is None else (total + sums, squares + sums_sq)
            count += x.numel() // x.shape[1]
    if total is None:
        raise ValueError("no images to measure the normalisation on")
    mean = total / count / 255
    std = (squares / count / 255**2 - mean.square()).clamp(min=0).sqrt()
    return tuple(round(float(m), 4) for m in mean), tuple(round(float(s), 4) if s > 1e-4 else 1.0 for s in std)


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
        from torchvision.datasets.utils import check_integrity

        damaged = [name for name, md5 in cls.resources if not check_integrity(str(raw / name), md5)]
        if damaged:  # truncated or altered: say so, instead of torchvision trying to download them again
            raise ValueError(f"{', '.join(damaged)} under {raw} are damaged (their MD5 checksums differ from the "
                             "published files); replace them with intact copies, or delete them and allow "
                             "--data.download true")
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
    except (RuntimeError, OSError, EOFError) as exc:  # no internet, or a corrupt file
        present = [raw / f for f in _MNIST_FILES if (raw / f).exists()] + [raw / f"{f}.gz" for f in _MNIST_FILES
                                                                          if (raw / f"{f}.gz").exists()]
        if present:  # the files are there, so they are damaged (truncated, or not what their checksum says)
            raise ValueError(f"{name} files under {raw} are damaged (torchvision said: {exc}); replace them with intact "
                             "copies of the four IDX files, or delete them and allow --data.download true") from exc
        raise _missing(name, root, [str(raw)], f"torchvision said: {exc}.") from exc
    return Splits(out.get("train"), out.get("val"), classes)


# ----------------------------------------------------------------------------- CIFAR

_CIFAR_CLASSES_10 = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]


def _load_cifar(cfg: DataConfig, name: str, splits: tuple[str, ...], progress: bool, subsets: dict | None = None):
    """CIFAR from torchvision's archive or a PNG folder; ``subsets`` (split -> (count, seed)): take only those
    images (a PNG folder then decodes only them)."""
    subsets = subsets or {}
    from torchvision import datasets

    cls = datasets.CIFAR10 if name == "cifar10" else datasets.CIFAR100
    root = cfg.resolved_data_dir()
    pickled = root / cls.base_folder  # cifar-10-batches-py / cifar-100-python (official download)
    png_folder = next((p for p in (root / name, root / name.upper()) if (p / "train").is_dir()), None)
    if png_folder is not None and not pickled.exists():
        train = _folder_split(png_folder / "train", cfg, None, None, progress, subset=subsets.get("train")) \
            if "train" in splits else None
        test_dir = png_folder / "test" if (png_folder / "test").is_dir() else png_folder / "val"
        test = _folder_split(test_dir, cfg, None, None, progress, subset=subsets.get("val")) if "val" in splits else None
        return Splits(train, test, class_names(png_folder / "train"))
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
                out[split] = take_subset(ImageSplit(torch.tensor(ds.targets, dtype=torch.long), images=images),
                                         *subsets.get(split, (None, 0)))
        classes = list(ds.classes)
    except (RuntimeError, OSError) as exc:
        raise _missing(name, root, [str(pickled)], f"torchvision said: {exc}.") from exc
    return Splits(out.get("train"), out.get("val"), classes)


# ----------------------------------------------------------------------------- image folders


NOT_DATA = ("__MACOSX",)  # folders of an archive's metadata (macOS zip files), never classes or images


def class_names(folder: Path) -> list[str]:
    """The class folders of ``folder``, sorted (hidden ones and archive metadata left out)."""
    return sorted(d.name for d in folder.iterdir() if d.is_dir() and not d.name.startswith(".") and d.name not in NOT_DATA)


def _is_image_file(path: Path, under: Path) -> bool:
    """An image file by its extension, not hidden (``._name.jpg``: macOS metadata) nor in a hidden folder."""
    parts = path.relative_to(under).parts
    return path.suffix.lower() in IMAGE_EXTENSIONS and not any(p.startswith(".") or p in NOT_DATA for p in parts)


def folder_splits(cfg: DataConfig) -> tuple[Path, Path | None]:
    """An image folder's training folder and validation folder: ``train/`` and ``val/`` (valid, validation,
    test) when it has them, else the folder itself and no validation folder (``--data.val_fraction`` splits it)."""
    if not cfg.path:
        raise ValueError("--data.dataset imagefolder needs --data.path DIR (class sub-folders, or train/ and val/)")
    root = Path(cfg.path).expanduser()
    if root.is_file():
        raise ValueError(f"--data.path {root} is a file; pass the folder that holds the class folders (or train/ and val/)")
    if not root.is_dir():
        raise DataNotFoundError(f"image folder {root} (--data.path) does not exist; pass the folder that holds the "
                                "class folders")
    if (root / "train").is_dir():
        return root / "train", next((root / v for v in ("val", "valid", "validation", "test") if (root / v).is_dir()), None)
    return root, None


def _load_image_folder(cfg: DataConfig, image_size: tuple[int, int] | None, splits: tuple[str, ...], progress: bool,
                       channels: int | None = None, subsets: dict | None = None):
    train_dir, val_dir = folder_splits(cfg)
    if image_size is None:
        raise ValueError("image folders are resized to the model's img_size, which was not given")
    classes = class_names(train_dir)
    files, labels = _list_images(train_dir, classes)
    refuse_unusable_classes(train_dir, classes, {name: labels.count(i) for i, name in enumerate(classes)})
    if val_dir is not None and (unknown := sorted(set(class_names(val_dir)) - set(classes))):
        raise ValueError(f"{val_dir} has class folder(s) {', '.join(unknown)} that {train_dir} has not: a class must "
                         "have training images; move them into the training folder or remove them")
    mode = ("L" if channels == 1 else "RGB") if channels else split_mode(files)  # one mode for both splits
    subsets = subsets or {}
    train = _folder_split(train_dir, cfg, image_size, classes, progress, mode, subsets.get("train")) \
        if "train" in splits else None
    if train is not None and subsets.get("train", (None,))[0] is None:  # every class must keep a decodable image
        left = torch.bincount(train.labels, minlength=len(classes)).tolist()
        refuse_unusable_classes(train_dir, classes, dict(zip(classes, left)), "that can be decoded")
    if val_dir is None and cfg.val_fraction <= 0:
        raise ValueError(f"{cfg.path} has no validation folder (train/ and val/ sub-folders): set --data.val_fraction "
                         "(e.g. 0.2) to hold out part of the training images")
    val = _folder_split(val_dir, cfg, image_size, classes, progress, mode, subsets.get("val")) \
        if val_dir is not None and "val" in splits else None
    return Splits(train, val, classes)


def _list_images(folder: Path, classes: list[str]) -> tuple[list[Path], list[int]]:
    files, labels = [], []
    for index, name in enumerate(classes):
        class_dir = folder / name
        if not class_dir.is_dir():
            continue
        found = sorted(p for p in class_dir.rglob("*") if _is_image_file(p, class_dir))
        files += found
        labels += [index] * len(found)
    if not files:
        raise DataNotFoundError(
            f"no images ({', '.join(IMAGE_EXTENSIONS)}) found in class folders under {folder}; "
            "expected <folder>/<class name>/<image files>"
        )
    return files, labels


def refuse_unusable_classes(folder: Path, classes: list[str], counts: dict[str, int], which: str = "") -> None:
    """A training folder needs two classes or more, and an image in every class folder (an empty one would
    silently become a class of the head that nothing teaches)."""
    if len(classes) < 2:
        raise ValueError(f"{folder} has {len(classes)} class folder ({', '.join(classes) or 'none'}): a classifier needs "
                         "two classes or more, one sub-folder of images each")
    empty = [name for name in classes if not counts.get(name)]
    if empty:
        raise ValueError(f"{folder}: class folder(s) {', '.join(empty)} hold no images {which or ''}"
                         f"({', '.join(IMAGE_EXTENSIONS)}); remove them or add images")


def resize_and_crop(image, image_size: tuple[int, int], crop_pct: float = 1.0, interpolation: str = "bicubic",
                    crop_mode: str = "center"):
    """Shorter side to ``min(image_size) / crop_pct`` (``squash``: each side to its size / crop_pct), then a center
    crop to ``image_size``.

    Works on PIL images (resampled by PIL, as timm's and torchvision's eval transforms do) and
    on uint8 tensors; returns the same kind.
    """
    from torchvision.transforms.v2 import functional as TF

    size = tuple(image.shape[-2:]) if isinstance(image, torch.Tensor) else image.size[::-1]  # PIL: (width, height)
    if tuple(size) == tuple(image_size) and crop_pct == 1.0:
        return image
    mode = TF.InterpolationMode.BICUBIC if interpolation == "bicubic" else TF.InterpolationMode.BILINEAR
    target = [round(min(image_size) / crop_pct)] if crop_mode == "center" else [round(s / crop_pct) for s in image_size]
    image = TF.resize(image, target, interpolation=mode, antialias=True)
    return TF.center_crop(image, list(image_size))


class DecodedImages(Dataset):
    """A source's images decoded to uint8 tensors (C, H, W): 8-bit, in one colour ``mode`` ("L" or "RGB"), resized
    to ``image_size`` when given (:func:`resize_and_crop`). Sources say how to open their i-th image and name it.

    An image that cannot be decoded raises :class:`BadImageError` naming it, or with ``mark_bad=(height, width)``
    comes back black, of that size, with label -1, for :func:`materialise` to report or leave out.
    """

    def __init__(self, labels: list[int] | torch.Tensor, image_size: tuple[int, int] | None, mode: str,
                 crop_pct: float = 1.0, interpolation: str = "bicubic", mark_bad: tuple[int, int] | None = None,
                 crop_mode: str = "center") -> None:
        self.labels = torch.as_tensor(labels, dtype=torch.long)
        self.image_size, self.mode, self.crop_pct, self.interpolation = image_size, mode, crop_pct, interpolation
        self.mark_bad, self.crop_mode = mark_bad, crop_mode

    def __len__(self) -> int:
        return len(self.labels)

    def open(self, i: int):
        """The i-th image as PIL decodes it (any mode); raises :class:`BadImageError` when it cannot be decoded."""
        raise NotImplementedError

    def name(self, i: int) -> str:
        """How a message names the i-th image (its file)."""
        raise NotImplementedError

    def identity(self) -> list:
        """What the decoded images depend on besides the decoding settings (files and their dates): the store's key."""
        raise NotImplementedError

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        try:
            return self.decode(self.open(i)), int(self.labels[i])
        except BadImageError as exc:
            if self.mark_bad is None:
                raise BadImageError(f"{exc}; {SKIP_HINT}") from None
            return torch.zeros(1 if self.mode == "L" else 3, *self.mark_bad, dtype=torch.uint8), -1

    def decode(self, image) -> torch.Tensor:
        from torchvision.transforms.v2 import functional as TF

        image = _eight_bit(image).convert(self.mode)
        if self.image_size is not None:
            image = resize_and_crop(image, self.image_size, self.crop_pct, self.interpolation, self.crop_mode)
        return TF.pil_to_tensor(image)

    def settings(self) -> list:
        return [self.mode, self.crop_pct, self.interpolation, *([self.crop_mode] if self.crop_mode != "center" else []),
                "pil", "8bit"]


class FolderImages(DecodedImages):
    """Image files, each with its label."""

    def __init__(self, files: list[Path], labels: list[int], image_size: tuple[int, int] | None, mode: str,
                 crop_pct: float = 1.0, interpolation: str = "bicubic", mark_bad: tuple[int, int] | None = None,
                 crop_mode: str = "center") -> None:
        super().__init__(labels, image_size, mode, crop_pct, interpolation, mark_bad, crop_mode)
        self.files = files

    def open(self, i: int):
        return open_image(self.files[i])

    def name(self, i: int) -> str:
        return str(self.files[i])

    def identity(self) -> list:
        return [(str(f.absolute()), *_size_and_time(f)) for f in self.files]


def _size_and_time(path: Path) -> tuple[int, int]:
    """A file's size and modification time; (-1, -1) for one that is gone (a broken link: the decoder names it)."""
    try:
        stat = path.stat()
    except OSError:
        return -1, -1
    return stat.st_size, int(stat.st_mtime)


def materialise(dataset: DecodedImages, cfg: DataConfig, cache_name: str, where: str, progress: bool) -> ImageSplit:
    """The one path from a source's images to a split: decoded once into a store in the cache (keyed by the source's
    identity and the decoding settings), or streamed, decoded every epoch, when larger than ``--data.max_cache_gib``;
    images that cannot be decoded are named, or left out with ``--data.skip_bad_images``."""
    size = dataset.image_size or _first_size(dataset)
    shape = (1 if dataset.mode == "L" else 3, *size)
    nbytes = len(dataset) * math.prod(shape)
    if nbytes > cfg.max_cache_gib * 2**30:
        log.info("%s: %d images stream from disk (%.1f GiB > max_cache_gib)", where, len(dataset), nbytes / 2**30)
        dataset.mark_bad = size if cfg.skip_bad_images else None  # marked images are left out of each batch (loader.py)
        return ImageSplit(dataset.labels, stream=dataset)
    dataset.mark_bad = size
    key = json.dumps([dataset.identity(), len(dataset), list(size), *dataset.settings()])
    fingerprint = hashlib.sha256(key.encode()).hexdigest()[:16]
    cache_file = cfg.resolved_cache_dir() / "tensors" / f"{cache_name}-{fingerprint}.safetensors"
    images, bad, _ = decode_once(dataset, cache_file, shape, cfg.num_workers, f"decoding {where} (once, cached)", progress)
    return without_bad_images(ImageSplit(dataset.labels, images=images), bad, dataset, where, cfg.skip_bad_images)


def _first_size(dataset: DecodedImages) -> tuple[int, int]:
    """The first image's (height, width): the decode size of a source whose images are all one size (CIFAR PNGs)."""
    first = dataset.open(0)
    return first.height, first.width


def without_bad_images(split: ImageSplit, bad: torch.Tensor, dataset: DecodedImages, where: str,
                       skip: bool) -> ImageSplit:
    """``split`` without the images that could not be decoded, with a warning listing them; without ``skip``
    an error that lists them, says why the first failed and names the option."""
    if not bool(bad.any()):
        return split
    index = bad.nonzero().flatten().tolist()
    names = [dataset.name(i) for i in index]
    listing = ", ".join(names[:5]) + (f" and {len(names) - 5} more" if len(names) > 5 else "")
    if not skip:
        try:
            dataset.open(index[0])
            reason = ""
        except BadImageError as exc:  # why the first one fails, in PIL's words
            reason = f" (the first: {str(exc).removeprefix(names[0]).strip()})"
        raise BadImageError(f"{len(names)} image(s) of {where} cannot be decoded: {listing}{reason}; {SKIP_HINT}")
    log.warning("%s: %d image(s) could not be decoded and are left out: %s", where, len(names), listing)
    return split.subset((~bad).nonzero().flatten())


def colour_mode(modes: Iterable[str]) -> str:
    """The one colour mode for a whole set of images from the PIL modes of a sample of them: "L" when every one is
    grayscale (8-bit, 16-bit, bilevel, with alpha), else "RGB" (folders, hf: sources and the probe decide alike)."""
    return "L" if all(mode in GRAYSCALE_MODES for mode in modes) else "RGB"


def split_mode(files: list[Path], sample: int = 64) -> str:
    """:func:`colour_mode` of an even sample of ``files``, read from their headers (a broken file is skipped: the
    decoder reports it): one colour mode for a whole split, whatever image happens to come first."""
    return colour_mode(mode for path in files[:: max(1, len(files) // sample)] if (mode := _header_mode(path)))


def _header_mode(path: Path) -> str | None:
    try:
        with Image.open(path) as im:
            return im.mode
    except UNREADABLE:
        return None


def _folder_split(folder: Path, cfg: DataConfig, image_size, classes: list[str] | None, progress: bool,
                  mode: str | None = None, subset: tuple[int | None, int] | None = None) -> ImageSplit:
    """The images of ``folder``'s class folders, decoded in ``mode`` (default: :func:`split_mode`) at ``image_size``
    (default: the first image's size) by :func:`materialise`. ``subset`` ``(count, seed)``: only the first
    ``count`` files of a seeded permutation are decoded."""
    classes = classes or class_names(folder)
    files, labels = _list_images(folder, classes)
    if subset is not None and subset[0] is not None:
        index = _seeded_perm(len(files), subset[1])[: subset[0]].tolist()
        files, labels = [files[i] for i in index], [labels[i] for i in index]
    dataset = FolderImages(files, labels, image_size, mode or split_mode(files), cfg.crop_pct, cfg.interpolation,
                           crop_mode=cfg.crop_mode)
    return materialise(dataset, cfg, f"{folder.parent.name}-{folder.name}", str(folder), progress)
