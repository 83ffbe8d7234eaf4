"""Hugging Face ``datasets`` as a data source: ``--data.dataset hf:...``.

The forms (``datasets`` is imported only when one is used; ``pip install "vitlab[hf]"``):

- ``hf:NAME`` — a data set on the Hub, e.g. ``hf:ylecun/mnist`` or ``hf:uoft-cs/cifar10``
  (``--data.hf_config``, ``--data.hf_revision``). Downloads go to Hugging Face's own cache
  (``HF_HOME`` / ``HF_DATASETS_CACHE``); with ``HF_DATASETS_OFFLINE=1`` only that cache is read.
- ``hf:PATH`` — a local folder (PATH starts with ``/``, ``.`` or ``~``, or is an existing folder):
  one written by ``save_to_disk`` (it holds ``dataset_dict.json`` or ``state.json``), or a local
  copy of a Hub data set repository (its data files).
- ``hf:imagefolder``, ``hf:parquet``, ``hf:arrow``, ``hf:webdataset`` — Hugging Face's builder for
  the files at ``--data.path`` (a folder, one file or a glob); a folder's splits come from its
  file and folder names (``train``, ``validation``/``val``, ``test``).

The images are the first ``Image`` feature and the labels the first ``ClassLabel`` (else an
integer column named ``label``), unless ``--data.image_column`` / ``--data.label_column`` say
otherwise; class names come from the ClassLabel. Validation uses the data set's validation
split (or valid/val/dev/eval, else test); without one, a seeded part of train is held out.
Images are decoded once, as image folders are (:func:`resize_and_crop` to the model's size),
into the same fingerprinted store (:func:`~vitlab.data.datasets.materialise`). Normalisation
defaults to the training images' own per-channel mean and std, as for image folders. Nothing
is written next to the data: ``datasets`` keeps its files in its cache, decoded images go to vitlab's.
"""

from __future__ import annotations

import glob
import io
import json
import logging
import os
import re
from collections import Counter
from pathlib import Path
from typing import Any

import torch

from vitlab.config import DataConfig
from vitlab.data.datasets import (
    HF_PREFIX,
    UNREADABLE,
    BadImageError,
    DataNotFoundError,
    DecodedImages,
    ImageSplit,
    Splits,
    _split_off_validation,
    colour_mode,
    materialise,
)

log = logging.getLogger(__name__)

FILE_BUILDERS = ("imagefolder", "parquet", "arrow", "webdataset")
VAL_SPLITS = ("validation", "valid", "val", "dev", "eval", "test")  # in order of preference
LABEL_NAMES = ("label", "labels", "target", "targets", "class", "category")  # integer columns taken as labels
DEFAULT_VAL_FRACTION = 0.1
FORMS = ("hf:NAME (a Hub data set, e.g. hf:ylecun/mnist), hf:/path/to/folder (written by save_to_disk), "
         "or hf:imagefolder / hf:parquet with --data.path")


class HFDataError(ValueError):
    """An hf: source that cannot be used as it is; the message says what it holds and how to fix it."""


def load_hf(cfg: DataConfig, image_size: tuple[int, int] | None, splits: tuple[str, ...], seed: int,
            progress: bool):
    """The splits of the hf: source ``cfg.dataset``, as :func:`load_data` wants them."""
    if cfg.hf_streaming:
        return load_hf_streaming(cfg, image_size, splits, progress)
    hf, source, available, where, train_name, val_name, image_col, label_col, names = _source(cfg)
    first = available[train_name]
    if val_name is not None:
        for col in (image_col, label_col):
            if col not in available[val_name].features:
                raise HFDataError(f"{source}: split {val_name!r} has no column {col!r} (columns: "
                                  f"{_describe_columns(hf, available[val_name].features)}); choose --data.hf_val_split")

    split_off = "train" in splits and cfg.val_fraction > 0  # load_data holds out part of train itself
    auto_split = val_name is None and not split_off  # no validation split: hold out part of train here
    wanted = {train_name: "train" in splits or (auto_split and "val" in splits)}
    if val_name is not None:
        wanted[val_name] = "val" in splits and not split_off
    labels = {name: _labels(available[name], label_col, name, source, available)
              for name, use in wanted.items() if use or name == train_name}  # train's labels always: they count the classes
    if names is not None:
        classes = names
    else:  # integer labels: classes 0 .. the largest label
        classes = [str(i) for i in range(1 + max(int(y.max()) if len(y) else -1 for y in labels.values()))]
    for name, y in labels.items():
        if len(y) and int(y.max()) >= len(classes):
            raise HFDataError(f"{source}: split {name!r} has label {int(y.max())} but column {label_col!r} names only "
                              f"{len(classes)} classes; fix the ClassLabel or choose another --data.label_column")

    mode = _pixel_mode(first, image_col)
    decoded: dict[str, ImageSplit] = {}
    size = tuple(image_size) if image_size is not None else None
    for name, y in labels.items():
        if not wanted[name]:
            continue
        if image_size is None:  # keep the images' own size, which must then be one size
            size = _common_size(hf, available[name], image_col, name, source, size)
        decoded[name] = _decode_split(available[name], y, cfg, name, image_col, mode, image_size, progress)

    train = decoded.get(train_name)
    val = decoded.get(val_name) if val_name is not None else None
    if split_off:
        validation = f"validation held out of {train_name!r} (--data.val_fraction)"
    elif val_name is not None:
        validation = f"validation split {val_name!r} ({len(available[val_name])})"
    else:
        validation = "no validation split"
    notes = {"source": f"{where}: train split {train_name!r} ({len(first)} images), {validation}; image column "
                       f"{image_col!r}, label column {label_col!r} ({len(classes)} classes)"}
    if auto_split and train is not None:
        train, val, split_notes = _split_off_validation(train, DEFAULT_VAL_FRACTION, seed)
        notes["validation"] = (f"{source} has no validation split (splits: {_describe_splits(available)}): "
                               f"{split_notes['validation']}; change it with --data.val_fraction or --data.hf_val_split")
    if "train" not in splits:
        train = None
    return Splits(train, val, classes, notes)


def probe_hf(cfg: DataConfig, sample: int = 32) -> tuple[int, int, list[tuple[int, int]]]:
    """``(classes, channels, sizes of a sample of training images)`` of the hf: source, as :func:`load_hf` will find them."""
    if cfg.hf_streaming:
        return probe_hf_streaming(cfg)
    _, source, available, _, train_name, val_name, image_col, label_col, names = _source(cfg)
    first = available[train_name]
    if names is not None:
        num_classes = len(names)
    else:  # integer labels: classes 0 .. the largest label of the splits that will be loaded
        loaded = [train_name] + ([val_name] if val_name is not None and label_col in available[val_name].features else [])
        num_classes = 1 + max(int(_labels(available[name], label_col, name, source, available).max()) for name in loaded)
    n = len(first)
    index = sorted({round(i * (n - 1) / max(1, sample - 1)) for i in range(min(n, sample))})
    sizes = [(img.height, img.width) for img in first.select_columns([image_col])[index][image_col]]
    return num_classes, 1 if _pixel_mode(first, image_col) == "L" else 3, sizes


def _source(cfg: DataConfig) -> tuple:
    """``(datasets module, source name, splits, where, train split, val split or None, image column, label column,
    class names or None)``: what :func:`load_hf` and :func:`probe_hf` both start from."""
    hf = _import_datasets()
    source = cfg.dataset
    available, where = _open(hf, cfg)
    train_name, val_name = _choose_splits(source, available, cfg)
    first = available[train_name]
    if len(first) == 0:
        raise HFDataError(f"{source}: split {train_name!r} is empty; its splits: {_describe_splits(available)}")
    image_col = _image_column(hf, source, first, cfg.image_column)
    label_col, names = _label_column(hf, source, first, cfg.label_column)
    return hf, source, available, where, train_name, val_name, image_col, label_col, names


def _import_datasets():
    try:
        import datasets
    except ImportError as exc:
        raise HFDataError('hf: data sets are read with Hugging Face\'s `datasets` package, which is not installed: '
                          'pip install "vitlab[hf]"') from exc
    return datasets


# ----------------------------------------------------------------------------- finding the data set


def _open(hf, cfg: DataConfig, streaming: bool = False) -> tuple[dict[str, Any], str]:
    """The source's splits (name -> ``datasets.Dataset``, or ``IterableDataset`` when ``streaming``) and a
    description of where they came from."""
    spec = cfg.dataset[len(HF_PREFIX):].strip()
    if not spec:
        raise HFDataError(f"--data.dataset hf: needs a source: {FORMS}")
    local = Path(spec).expanduser()
    hub = False
    if spec in FILE_BUILDERS:
        if not cfg.path:
            raise HFDataError(f"hf:{spec} reads local files: pass --data.path with a folder, a file or a glob "
                              f"(e.g. --data.dataset hf:{spec} --data.path /data/my_images)")
        path = Path(cfg.path).expanduser()
        if path.is_dir():
            kwargs = {"data_dir": str(path)}
        elif glob.glob(str(path)):
            kwargs = {"data_files": str(path)}
        else:
            raise DataNotFoundError(f"hf:{spec}: --data.path {path} is neither a folder nor a file or glob that matches files")
        where = f"{spec} files at {path}"
        load = lambda: hf.load_dataset(spec, **kwargs, streaming=streaming)
    elif cfg.path:
        raise HFDataError(f"--data.path is for hf:imagefolder / hf:parquet (the files they read); {cfg.dataset} names "
                          "its data itself: drop --data.path")
    elif spec.startswith(("/", ".", "~")) or local.is_dir():
        if not local.is_dir():
            raise DataNotFoundError(f"{cfg.dataset}: there is no folder {local}; pass a folder written by save_to_disk "
                                    "(it holds dataset_dict.json or state.json) or a local copy of a Hub data set")
        if (local / "dataset_dict.json").is_file() or (local / "state.json").is_file():
            where = f"save_to_disk folder {local}"
            load = lambda: _iterable(hf.load_from_disk(str(local))) if streaming else hf.load_from_disk(str(local))
        else:
            where = f"local data set folder {local}"
            load = lambda: hf.load_dataset(str(local), name=cfg.hf_config, streaming=streaming)
    else:
        hub = True
        where = f"Hub data set {spec}" + (f" ({cfg.hf_config})" if cfg.hf_config else "")
        load = lambda: hf.load_dataset(spec, name=cfg.hf_config, revision=cfg.hf_revision, streaming=streaming)
    try:
        loaded = load()
    except (ValueError, hf.exceptions.DatasetsError) as exc:
        if not isinstance(exc, FileNotFoundError):
            hint = " Name one with --data.hf_config." if "config" in str(exc).lower() else ""
            raise HFDataError(f"{cfg.dataset}: datasets could not read the {where}: {exc}.{hint}") from exc
        raise _unreachable(hf, cfg, where, hub, exc) from exc
    except Exception as exc:  # no connection, offline, not in the cache, unreadable files
        raise _unreachable(hf, cfg, where, hub, exc) from exc
    if isinstance(loaded, (hf.Dataset, hf.IterableDataset)):  # one split, e.g. ``Dataset.save_to_disk``
        return {"train": loaded}, where
    if not isinstance(loaded, dict) or not loaded:
        raise HFDataError(f"{cfg.dataset}: expected a Dataset or DatasetDict, got {type(loaded).__name__}")
    return dict(loaded), where


def _unreachable(hf, cfg: DataConfig, where: str, hub: bool, exc: Exception) -> DataNotFoundError:
    message = f"{cfg.dataset}: could not load the {where} ({type(exc).__name__}: {exc})."
    if hub:
        offline = "Offline mode is on (HF_DATASETS_OFFLINE / HF_HUB_OFFLINE)" if _offline(hf) else \
            "The Hub could not be reached or does not have it"
        message += (f" {offline}, and Hugging Face's cache ({hf.config.HF_DATASETS_CACHE}) does not hold it. Check the "
                    "name, download it once with internet (the same HF_HOME), or copy a folder written by save_to_disk "
                    "and pass hf:/path/to/it (or read local files with hf:parquet / hf:imagefolder and --data.path).")
    return DataNotFoundError(message)


def _offline(hf) -> bool:
    return bool(getattr(hf.config, "HF_HUB_OFFLINE", False) or getattr(hf.config, "HF_DATASETS_OFFLINE", False))


def _describe_splits(available: dict[str, Any]) -> str:
    return ", ".join(f"{name} ({len(ds)})" if hasattr(ds, "__len__") else name for name, ds in available.items())


def _iterable(loaded):
    """A ``save_to_disk`` data set as the streams ``streaming=True`` gives (one shard per 1,000 examples, at most 64)."""
    def stream(ds):
        return ds.to_iterable_dataset(num_shards=max(1, min(64, len(ds) // 1000)))

    return stream(loaded) if not isinstance(loaded, dict) else {name: stream(ds) for name, ds in loaded.items()}


def _choose_splits(source: str, available: dict[str, Any], cfg: DataConfig) -> tuple[str, str | None]:
    def check(name: str, flag: str) -> str:
        if name not in available:
            raise HFDataError(f"{source} has no split {name!r} ({flag}); its splits: {_describe_splits(available)}")
        return name

    if cfg.hf_train_split:
        train = check(cfg.hf_train_split, "--data.hf_train_split")
    elif "train" in available or len(available) == 1:
        train = "train" if "train" in available else next(iter(available))
    else:
        raise HFDataError(f"{source} has no 'train' split; its splits: {_describe_splits(available)}. "
                          "Choose one with --data.hf_train_split NAME")
    if cfg.hf_val_split:
        val = check(cfg.hf_val_split, "--data.hf_val_split")
        if val == train:
            raise HFDataError(f"{source}: --data.hf_val_split {val!r} is also the training split; hold out part of "
                              "it with --data.val_fraction instead")
        return train, val
    return train, next((name for name in VAL_SPLITS if name in available and name != train), None)


# ----------------------------------------------------------------------------- columns and labels


def _kind(hf, feature) -> str:
    if isinstance(feature, hf.Image):
        return "Image"
    if isinstance(feature, hf.ClassLabel):
        return f"ClassLabel, {feature.num_classes} classes"
    if isinstance(feature, hf.Value):
        return feature.dtype
    return type(feature).__name__


def _describe_columns(hf, features) -> str:
    return ", ".join(f"{name} ({_kind(hf, f)})" for name, f in features.items())


def _image_column(hf, source: str, ds, wanted: str | None) -> str:
    features = ds.features
    cast = "cast it before saving: ds = ds.cast_column(NAME, datasets.Image())"
    if wanted:
        if wanted not in features:
            raise HFDataError(f"{source}: no column {wanted!r} (--data.image_column); columns: {_describe_columns(hf, features)}")
        if not isinstance(features[wanted], hf.Image):
            raise HFDataError(f"{source}: column {wanted!r} holds {_kind(hf, features[wanted])}, not images (an Image "
                              f"feature); columns: {_describe_columns(hf, features)}. If it holds image files or paths, "
                              + cast.replace("NAME", repr(wanted)))
        return wanted
    found = [name for name, f in features.items() if isinstance(f, hf.Image)]
    if not found:
        raise HFDataError(f"{source}: no image column (an Image feature); columns: {_describe_columns(hf, features)}. "
                          f"If one holds image files or paths, {cast}")
    return found[0]


def _is_label(hf, feature) -> bool:
    return isinstance(feature, hf.ClassLabel) or (isinstance(feature, hf.Value) and feature.dtype.startswith(("int", "uint")))


def _label_column(hf, source: str, ds, wanted: str | None) -> tuple[str, list[str] | None]:
    """The label column and, for a ClassLabel, its class names."""
    features = ds.features
    encode = "a column of class names becomes one with ds = ds.class_encode_column(NAME)"
    if wanted:
        if wanted not in features:
            raise HFDataError(f"{source}: no column {wanted!r} (--data.label_column); columns: {_describe_columns(hf, features)}")
        if not _is_label(hf, features[wanted]):
            raise HFDataError(f"{source}: column {wanted!r} holds {_kind(hf, features[wanted])}, not class labels (a "
                              f"ClassLabel or integer column); columns: {_describe_columns(hf, features)}; "
                              + encode.replace("NAME", repr(wanted)))
    else:
        candidates = [name for name, f in features.items() if isinstance(f, hf.ClassLabel)]
        candidates += [name for name in LABEL_NAMES if name in features and _is_label(hf, features[name])]
        if not candidates:
            raise HFDataError(f"{source}: no label column (a ClassLabel, or an integer column named "
                              f"{'/'.join(LABEL_NAMES)}); columns: {_describe_columns(hf, features)}. Name one with "
                              f"--data.label_column; {encode}")
        wanted = candidates[0]
    feature = features[wanted]
    return wanted, (list(feature.names) if isinstance(feature, hf.ClassLabel) else None)


def _labels(ds, column: str, split: str, source: str, available: dict[str, Any]) -> torch.Tensor:
    labels = torch.from_numpy(ds.select_columns([column]).with_format("numpy")[:][column]).long()
    unlabelled = int((labels < 0).sum())
    if unlabelled:
        raise HFDataError(f"{source}: {unlabelled} of the {len(labels)} examples of split {split!r} have no label "
                          f"({column} = -1); validate on another split (--data.hf_val_split NAME; splits: "
                          f"{_describe_splits(available)}) or hold out part of train (--data.val_fraction 0.1)")
    return labels


# ----------------------------------------------------------------------------- images


def _pixel_mode(ds, column: str, sample: int = 32) -> str:
    """"L" when every image of an even sample is grayscale, else "RGB" (as image folders are read)."""
    n = len(ds)
    index = sorted({round(i * (n - 1) / max(1, sample - 1)) for i in range(min(n, sample))})
    return colour_mode(img.mode for img in ds.select_columns([column])[index][column])


def _common_size(hf, ds, column: str, split: str, source: str, expected: tuple | None) -> tuple[int, int]:
    """The one (height, width) of every image (read from the file headers); several sizes are an error."""
    from PIL import Image

    raw = ds.select_columns([column]).cast_column(column, hf.Image(decode=False))
    sizes: Counter = Counter()
    for batch in raw.iter(batch_size=1024):
        for item in batch[column]:
            with Image.open(io.BytesIO(item["bytes"]) if item["bytes"] is not None else item["path"]) as img:
                sizes[(img.height, img.width)] += 1
    if expected is not None:
        sizes[tuple(expected)] += 0
    if len(sizes) > 1:
        found = ", ".join(f"{h}x{w} ({count})" for (h, w), count in sizes.most_common(5))
        raise HFDataError(f"{source}: the images of split {split!r} are not all one size (height x width: {found}"
                          f"{', ...' if len(sizes) > 5 else ''}); give the size to decode them to: load_data(..., "
                          "image_size=(H, W)) (the CLI passes --model.img_size), with --data.crop_pct for the crop")
    return next(iter(sizes))


class HFImages(DecodedImages):
    """The images of one split of a ``datasets.Dataset`` (its ``column``), decoded as image files are."""

    def __init__(self, ds, column: str, labels: torch.Tensor, image_size: tuple[int, int] | None, mode: str,
                 crop_pct: float = 1.0, interpolation: str = "bicubic", crop_mode: str = "center",
                 where: str = "", identity: list | None = None) -> None:
        super().__init__(labels, image_size, mode, crop_pct, interpolation, crop_mode=crop_mode)
        self.ds, self.column, self.where, self._identity = ds.select_columns([column]), column, where, identity or []

    def open(self, i: int):
        try:
            return self.ds[int(i)][self.column]
        except UNREADABLE as exc:
            raise BadImageError(f"{self.name(i)} cannot be decoded ({type(exc).__name__}: {exc})") from exc

    def name(self, i: int) -> str:
        return f"{self.where} example {i}"

    def identity(self) -> list:
        return self._identity

    def __getitems__(self, indices: list[int]) -> list[tuple[torch.Tensor, int]]:
        """A whole batch in one read (the DataLoader calls this); one image at a time when one cannot be decoded."""
        try:
            images = self.ds[list(indices)][self.column]
        except UNREADABLE:
            return [self[i] for i in indices]
        return [(self.decode(img), int(self.labels[i])) for i, img in zip(indices, images)]


def _decode_split(ds, labels: torch.Tensor, cfg: DataConfig, split: str, column: str, mode: str,
                  image_size: tuple[int, int] | None, progress: bool) -> ImageSplit:
    files = [(f["filename"], os.stat(f["filename"]).st_size, int(os.stat(f["filename"]).st_mtime))
             for f in ds.cache_files if os.path.exists(f["filename"])]
    identity = [cfg.dataset, cfg.hf_config, cfg.hf_revision, cfg.path, split, column, getattr(ds, "_fingerprint", None),
                files]
    dataset = HFImages(ds, column, labels, image_size, mode, cfg.crop_pct, cfg.interpolation, cfg.crop_mode,
                       f"{cfg.dataset} [{split}]", identity)
    name = cfg.dataset[len(HF_PREFIX):] + (f"-{Path(cfg.path).name}" if cfg.path else "")
    slug = re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("_.")[-48:]
    return materialise(dataset, cfg, f"hf-{slug}-{split}", f"{cfg.dataset} [{split}]", progress)



# ----------------------------------------------------------------------------- streaming (--data.hf_streaming)


class _StreamReader:
    """Shard ``i`` of a streamed split as (key, image bytes or file path, label or None): the images undecoded."""

    def __init__(self, ds, split: str, image_col: str, label_col: str) -> None:
        import datasets

        self.ds = ds.select_columns([image_col, label_col]).cast_column(image_col, datasets.Image(decode=False))
        self.split, self.image_col, self.label_col = split, image_col, label_col

    def __call__(self, shard: int):
        part = self.ds.shard(self.ds.n_shards, shard) if self.ds.n_shards > 1 else self.ds
        for j, row in enumerate(part):
            image, label = row[self.image_col], row[self.label_col]
            data = None if image is None else (image.get("bytes") or image.get("path"))
            yield f"{self.split} shard {shard} example {j}", data, int(label) if label is not None and label >= 0 else None


def _stream_shards(cfg: DataConfig, ds, split: str, image_col: str, label_col: str):
    """The split as :class:`~vitlab.data.shards.Shards` (its shards, counted once and remembered in the cache)."""
    from vitlab.data.shards import Shards, counted

    key = json.dumps([cfg.dataset, cfg.hf_config, cfg.hf_revision, cfg.path, split, image_col, label_col,
                      _local_files(cfg)])
    labels = ds.select_columns([label_col])
    count, top = counted(cfg, key, lambda: (row[label_col] if row[label_col] is not None and row[label_col] >= 0
                                            else None for row in labels))
    if count == 0:
        raise HFDataError(f"{cfg.dataset}: split {split!r} holds no labelled examples")
    reader = _StreamReader(ds, split, image_col, label_col)
    return Shards(tuple(range(ds.n_shards)), count, top + 1, reader, f"{cfg.dataset} [{split}]", key)


def _local_files(cfg: DataConfig) -> list[tuple[str, int, int]]:
    """(path, size, modification time) of the local files an hf: source reads (none for the Hub's)."""
    spec = Path(cfg.dataset[len(HF_PREFIX):]).expanduser()
    root = Path(cfg.path).expanduser() if cfg.path else (spec if spec.exists() else None)
    if root is None:
        return []
    found = glob.glob(str(root / "**"), recursive=True) if root.is_dir() else glob.glob(str(root))
    return [(f, os.stat(f).st_size, int(os.stat(f).st_mtime)) for f in sorted(found) if os.path.isfile(f)]


def _streamed_source(cfg: DataConfig) -> tuple:
    """``(source, where, train split, val split, image column, label column, class names or None, {split: Shards})``."""
    hf = _import_datasets()
    source = cfg.dataset
    available, where = _open(hf, cfg, streaming=True)
    train_name, val_name = _choose_splits(source, available, cfg)
    if val_name is None:
        raise HFDataError(f"{source}: --data.hf_streaming needs a validation split (splits: {_describe_splits(available)}); "
                          "choose one with --data.hf_val_split")
    first = available[train_name]
    if first.features is None:
        raise HFDataError(f"{source}: streaming does not know its columns before reading; load it without "
                          "--data.hf_streaming, or save it as parquet")
    image_col = _image_column(hf, source, first, cfg.image_column)
    label_col, names = _label_column(hf, source, first, cfg.label_column)
    shards = {name: _stream_shards(cfg, available[name], name, image_col, label_col) for name in (train_name, val_name)}
    return source, where, train_name, val_name, image_col, label_col, names, shards


def load_hf_streaming(cfg: DataConfig, image_size: tuple[int, int] | None, splits: tuple[str, ...],
                      progress: bool) -> Splits:
    """The hf: source with ``streaming=True`` (``--data.hf_streaming``): the training split read as a stream every
    epoch, as WebDataset shards are (:mod:`vitlab.data.shards`: seeded shard order, split over processes and
    workers, a bounded shuffle buffer, equal batch counts), the validation split decoded once into a store."""
    from vitlab.data.shards import ShardDecoder, ShardSplit, shard_mode, stored

    if image_size is None:
        raise ValueError("streamed hf: sources are resized to the model's img_size, which was not given")
    if cfg.val_fraction > 0 or cfg.train_subset is not None:
        raise ValueError("--data.val_fraction and --data.train_subset do not apply to a streamed hf: source (it is read "
                         "as a stream): validate on a split of its own (--data.hf_val_split)")
    source, where, train_name, val_name, image_col, label_col, names, shards = _streamed_source(cfg)
    classes = names or [str(i) for i in range(max(s.num_classes for s in shards.values()))]
    mode, _ = shard_mode(list(shards[train_name].files), reader=shards[train_name].reader)
    decoder = ShardDecoder([], image_size, mode, cfg.crop_pct, cfg.interpolation, crop_mode=cfg.crop_mode)
    train = ImageSplit(torch.zeros(0, dtype=torch.long), shards=ShardSplit(shards[train_name], decoder,
                       cfg.skip_bad_images, cfg.shuffle_buffer)) if "train" in splits else None
    val = stored(shards[val_name], decoder, cfg, progress) if "val" in splits else None
    notes = {"source": f"{where}, streamed: train split {train_name!r} ({shards[train_name].count} images in "
                       f"{len(shards[train_name].files)} shards, read every epoch), validation split {val_name!r} "
                       f"({shards[val_name].count}, decoded once); image column {image_col!r}, label column "
                       f"{label_col!r} ({len(classes)} classes)"}
    return Splits(train, val, classes, notes)


def probe_hf_streaming(cfg: DataConfig) -> tuple[int, int, list[tuple[int, int]]]:
    """:func:`probe_hf` for ``--data.hf_streaming``: from the features, one counting pass and the first images."""
    from vitlab.data.shards import shard_mode

    _, _, train_name, _, _, _, names, shards = _streamed_source(cfg)
    mode, sizes = shard_mode(list(shards[train_name].files), reader=shards[train_name].reader)
    return len(names) if names else max(s.num_classes for s in shards.values()), 1 if mode == "L" else 3, sizes
