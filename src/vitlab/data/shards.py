"""WebDataset tar shards: a training split read as a stream, for data too large to decode into a store.

``--data.dataset webdataset --data.path DIR``: ``DIR`` holds ``train/*.tar`` and ``val/*.tar`` (or ``train-*.tar``
and ``val-*.tar``; ``validation``/``valid``/``test`` are taken for ``val``) and may hold ``classes.txt`` (one class
name per line). A sample is the files of a tar that share a key (the name up to the first dot of the file name):
an image (``.jpg``, ``.png``, ``.webp``, ...) and its label (``.cls``: an integer as text, or ``.json`` with
``"label"``). ``vitlab shards`` writes such shards from an image folder, re-encoded as JPEG at a given size.

The training split is never stored decoded; every epoch reads it, as timm's ``wds`` reader does:

- the shard order is shuffled with the epoch's seed, and the shards are split over every DataLoader worker of
  every process (torchrun rank); with fewer shards than workers each worker reads every shard and keeps its
  share of the samples;
- samples pass a bounded shuffle buffer (``--data.shuffle_buffer``), so the order is only approximately random;
- every process gets the same number of full batches, ``samples // batch_size``, which keeps DDP in step (a worker
  whose shards run out before its count reads them again);
- a run resumes at an epoch boundary.

The validation split is decoded once into a store, as image folders are, so it is read by index: sharded over
processes, and per image for the report's figures.
"""

from __future__ import annotations

import hashlib
import io
import itertools
import json
import logging
import random
import re
import tarfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import IterableDataset, get_worker_info

from vitlab.atomic import atomic_write, atomic_write_text
from vitlab.config import DataConfig
from vitlab.data.datasets import (
    SKIP_HINT,
    UNREADABLE,
    BadImageError,
    DataNotFoundError,
    DecodedImages,
    ImageSplit,
    Splits,
    colour_mode,
    open_image,
    without_bad_images,
)
from vitlab.data.store import decode_once

log = logging.getLogger(__name__)

IMAGE_KEYS = ("jpg", "jpeg", "png", "webp", "bmp", "ppm", "tif", "tiff")
LABEL_KEYS = ("cls", "label", "json")
VAL_NAMES = ("val", "validation", "valid", "test")
LAYOUT = ("expected DIR/train/*.tar and DIR/val/*.tar (or DIR/train-*.tar and DIR/val-*.tar), each sample an image "
          "(.jpg/.png/.webp) and its label (.cls) sharing a key; `vitlab shards` writes them from an image folder")


def read_tar(path: Path) -> Iterator[tuple[str, bytes | None, int | None]]:
    """(key, image bytes, label) of each sample of a tar shard."""
    for key, image, _, label in read_samples(path):
        yield key, image, label


@dataclass(frozen=True)
class Shards:
    """One split read as a stream: its shards (tar files, or the shard numbers of a streamed Hugging Face split),
    how to read one (``reader(shard)`` yields (key, image bytes or file path, label or None)), and what a scan of
    them found."""

    files: tuple
    count: int  # samples that have an image and a label
    num_classes: int  # the largest label + 1
    reader: Callable[[Any], Iterator[tuple[str, bytes | str | None, int | None]]] = read_tar
    where: str = ""  # the split, for messages and the store's name
    identity: str = ""  # what the decoded validation store depends on (files and their dates)


def find_shards(cfg: DataConfig) -> tuple[list[Path], list[Path]]:
    """The training and validation tar files under ``--data.path``, sorted."""
    if not cfg.path:
        raise ValueError(f"--data.dataset webdataset needs --data.path DIR: {LAYOUT}")
    root = Path(cfg.path).expanduser()
    if not root.is_dir():
        raise DataNotFoundError(f"--data.path {root} is not a folder: {LAYOUT}")

    def split(names: tuple[str, ...]) -> list[Path]:
        for name in names:
            found = sorted((root / name).glob("*.tar")) or sorted(root.glob(f"{name}-*.tar")) or \
                sorted(root.glob(f"{name}_*.tar"))
            if found:
                return found
        return []

    train, val = split(("train",)), split(VAL_NAMES)
    if not train:
        raise DataNotFoundError(f"no training shards under {root}: {LAYOUT}")
    if not val:
        raise DataNotFoundError(f"no validation shards under {root} (val/*.tar or val-*.tar): {LAYOUT}")
    return train, val


def read_samples(path: Path) -> Iterator[tuple[str, bytes | None, str, int | None]]:
    """(key, image bytes, image extension, label) of each sample of a tar, read in one sequential pass; a sample
    without an image or label has None there."""
    try:
        with tarfile.open(path, mode="r|*") as tar:
            key, parts = None, {}
            for member in tar:
                if not member.isfile():
                    continue
                directory, _, base = member.name.rpartition("/")
                stem, _, ext = base.partition(".")
                if not stem or base.startswith("."):
                    continue
                name = f"{directory}/{stem}" if directory else stem
                if name != key and key is not None:
                    yield _sample(key, parts)
                    parts = {}
                key = name
                parts[ext.lower()] = tar.extractfile(member).read()
            if key is not None:
                yield _sample(key, parts)
    except (tarfile.TarError, OSError, EOFError) as exc:
        raise BadImageError(f"shard {path} cannot be read ({type(exc).__name__}: {exc}); replace it or remove it "
                            "from the folder") from exc


def _sample(key: str, parts: dict[str, bytes]) -> tuple[str, bytes | None, str, int | None]:
    ext = next((e for e in IMAGE_KEYS if e in parts), "")
    label = None
    for name in LABEL_KEYS:
        if name in parts:
            try:
                value = json.loads(parts[name])
                label = int(value["label"] if isinstance(value, dict) else value)
            except (ValueError, KeyError, TypeError):
                label = None
            break
    return key, parts.get(ext), ext, label


def scan(files: list[Path], cfg: DataConfig) -> Shards:
    """Count the samples and find the largest label of ``files`` (one pass), remembered in the cache per file."""
    key = json.dumps([(str(f.absolute()), f.stat().st_size, int(f.stat().st_mtime)) for f in files])
    count, top = counted(cfg, key, lambda: (label for path in files for _, image, label in read_tar(path)
                                           if image is not None))
    if count == 0:
        raise DataNotFoundError(f"shards {', '.join(map(str, files[:3]))}... hold no sample with an image and a label: "
                                f"{LAYOUT}")
    return Shards(tuple(files), count, top + 1, read_tar, f"shards {files[0].parent}", key)


def counted(cfg: DataConfig, key: str, labels: Callable[[], Iterator[int | None]]) -> tuple[int, int]:
    """(samples with a label, the largest label) of the stream ``labels()`` yields, remembered in the cache under
    ``key``: one pass over a split, the first time only."""
    cache = cfg.resolved_cache_dir() / "shards" / f"{hashlib.sha256(key.encode()).hexdigest()[:16]}.json"
    if cache.exists():
        known = json.loads(cache.read_text())
        return known["count"], known["num_classes"] - 1
    count, top = 0, -1
    for label in labels():
        if label is not None:
            count, top = count + 1, max(top, label)
    atomic_write_text(cache, json.dumps({"count": count, "num_classes": top + 1}))
    return count, top


def class_names_of(cfg: DataConfig, num_classes: int) -> list[str]:
    """The names in ``classes.txt`` beside the shards, else "0" .. "K-1"."""
    listed = Path(cfg.path).expanduser() / "classes.txt"
    if listed.is_file():
        names = [line.strip() for line in listed.read_text().splitlines() if line.strip()]
        if len(names) < num_classes:
            raise ValueError(f"{listed} names {len(names)} classes but the shards hold label {num_classes - 1}; "
                             "list one class name per line, in label order")
        return names
    return [str(i) for i in range(num_classes)]


def shard_mode(files: list, sample: int = 32, reader=read_tar) -> tuple[str, list[tuple[int, int]]]:
    """The colour mode (:func:`colour_mode`) and (height, width) of the first ``sample`` images of the first shard."""
    from PIL import Image

    modes, sizes = [], []
    for _, image, _ in itertools.islice(reader(files[0]), sample):
        try:
            with Image.open(io.BytesIO(image) if isinstance(image, bytes) else image) as im:
                modes.append(im.mode)
                sizes.append((im.height, im.width))
        except (*UNREADABLE, TypeError):
            continue
    if not sizes:
        raise BadImageError(f"none of the first {sample} images of shard {files[0]} can be decoded; check the data")
    return colour_mode(modes), sizes


class ShardDecoder(DecodedImages):
    """Decodes shard images as image files are decoded (mode, 8 bits, resize and crop)."""

    def image(self, key: str, data: bytes | str | None, shard):
        """Sample ``key`` of ``shard`` (its image's bytes, or a file path) decoded; :class:`BadImageError` naming both."""
        try:
            return self.decode(open_image(data if isinstance(data, str) else io.BytesIO(data or b"")))
        except BadImageError as exc:
            cause = exc.__cause__
            raise BadImageError(f"{shard}: sample {key} cannot be decoded ({type(cause).__name__}: {cause})") from cause


def _worker_samples(shards: Shards, part: int, parts: int, seed: int | None) -> Iterator:
    """This worker's (shard, key, image, label), one pass: its shards (every ``parts``-th of the list, shuffled
    with ``seed``) or, with fewer shards than workers, its ``part``-th of every shard's samples."""
    order = list(shards.files)
    if seed is not None:
        random.Random(seed).shuffle(order)
    mine, by_sample = (order[part::parts], False) if len(order) >= parts else (order, True)
    for shard in mine:
        for i, (key, image, label) in enumerate(shards.reader(shard)):
            if label is not None and (not by_sample or i % parts == part):
                yield shard, key, image, label


def _passes(shards: Shards, part: int, parts: int, seed: int, buffer: int) -> Iterator:
    """Endless passes over this worker's share, each through the shuffle buffer and emptied before the next starts
    (so a sample comes again only after every other one of the share has come once)."""
    for round_ in itertools.count():
        given = False
        rng = random.Random((seed + round_) * 100_003 + part)
        for sample in _shuffled(_worker_samples(shards, part, parts, seed + round_), buffer, rng):
            given = True
            yield sample
        if not given:
            raise ValueError(f"this process's share of {shards.where} ({len(shards.files)} shards for {parts} readers) holds no "
                             f"labelled samples: {LAYOUT}")


def _shuffled(items: Iterator, size: int, rng: random.Random) -> Iterator:
    """``items`` through a buffer of ``size``: each item out is a random one of the buffer (timm's, WebDataset's)."""
    buffer: list = []
    for item in items:
        if len(buffer) < size:
            buffer.append(item)
            continue
        i = rng.randrange(size)
        buffer[i], item = item, buffer[i]
        yield item
    rng.shuffle(buffer)
    yield from buffer


class ShardSplit(IterableDataset):
    """A split read from shards: every sample once, decoded, as (uint8 image, label) (``len``: the sample count);
    DataLoader workers read disjoint parts. :meth:`epoch` gives a training epoch's batches. A sample that cannot be
    decoded stops the run with its shard and key named, or is left out with ``skip_bad`` (or, with ``mark=(C, H, W)``,
    comes back black with label -1 for a store to leave out)."""

    def __init__(self, shards: Shards, decoder: ShardDecoder, skip_bad: bool, shuffle_buffer: int,
                 mark: tuple[int, ...] | None = None) -> None:
        self.shards, self.decoder, self.skip_bad, self.shuffle_buffer, self.mark = shards, decoder, skip_bad, \
            shuffle_buffer, mark

    def __len__(self) -> int:
        return self.shards.count

    def __iter__(self):
        info = get_worker_info()
        part, parts = (info.id, info.num_workers) if info is not None else (0, 1)
        for shard, key, data, label in _worker_samples(self.shards, part, parts, None):
            image = self._decode(shard, key, data)
            if image is not None:
                yield image, label
            elif self.mark is not None:
                yield torch.zeros(self.mark, dtype=torch.uint8), -1

    def _decode(self, shard: Path, key: str, data: bytes | None) -> torch.Tensor | None:
        try:
            return self.decoder.image(key, data, shard)
        except BadImageError as exc:
            if not (self.skip_bad or self.mark is not None):
                raise BadImageError(f"{exc}; {SKIP_HINT}") from None
            log.warning("%s (left out)", exc)
            return None

    def epoch(self, seed: int, rank: int, world: int, batch_size: int, steps: int) -> IterableDataset:
        """This process's ``steps`` batches of its share of ``batch_size``, shuffled with ``seed``."""
        return _Epoch(self, seed, rank, world, batch_size, steps)


class _Epoch(IterableDataset):
    def __init__(self, split: ShardSplit, seed: int, rank: int, world: int, batch_size: int, steps: int) -> None:
        self.split, self.seed, self.rank, self.world, self.steps = split, seed, rank, world, steps
        self.batch = len(torch.arange(batch_size).tensor_split(world)[rank])

    def __iter__(self):
        info = get_worker_info()
        worker, workers = (info.id, info.num_workers) if info is not None else (0, 1)
        part, parts = self.rank * workers + worker, self.world * workers
        samples = _passes(self.split.shards, part, parts, self.seed, self.split.shuffle_buffer)
        for _ in range(worker, self.steps, workers):  # batch j is worker j % workers's: the loader takes them in turn
            images, labels = [], []
            while len(images) < self.batch:
                shard, key, data, label = next(samples)
                image = self.split._decode(shard, key, data)
                if image is not None:
                    images.append(image)
                    labels.append(label)
            yield torch.stack(images), torch.tensor(labels)


def load_shards(cfg: DataConfig, image_size: tuple[int, int] | None, splits: tuple[str, ...], progress: bool) -> Splits:
    """The training split as a :class:`ShardSplit` stream, the validation split decoded once into a store."""
    if image_size is None:
        raise ValueError("webdataset shards are resized to the model's img_size, which was not given")
    if cfg.val_fraction > 0 or cfg.train_subset is not None:
        raise ValueError("--data.val_fraction and --data.train_subset do not apply to webdataset shards (they are "
                         "read as a stream): write the validation samples to val/*.tar, and fewer training shards")
    train_files, val_files = find_shards(cfg)
    train_shards, val_shards = scan(train_files, cfg), scan(val_files, cfg)
    num_classes = max(train_shards.num_classes, val_shards.num_classes)
    if num_classes < 2:
        raise ValueError(f"the shards under {cfg.path} hold one class (label 0): a classifier needs two classes or more")
    classes = class_names_of(cfg, num_classes)
    mode, _ = shard_mode(train_files)
    decoder = ShardDecoder([], image_size, mode, cfg.crop_pct, cfg.interpolation, crop_mode=cfg.crop_mode)
    train = val = None
    if "train" in splits:
        train = ImageSplit(torch.zeros(0, dtype=torch.long),
                           shards=ShardSplit(train_shards, decoder, cfg.skip_bad_images, cfg.shuffle_buffer))
    if "val" in splits:
        val = stored(val_shards, decoder, cfg, progress)
    notes = {"source": f"webdataset shards under {cfg.path}: {len(train_files)} training shards "
                       f"({train_shards.count} samples, streamed), {len(val_files)} validation shards "
                       f"({val_shards.count} samples, decoded once)"}
    return Splits(train, val, classes, notes)


class _Listed(DecodedImages):
    """Names the samples of a stored shard split, for the message about those that could not be decoded (each was
    logged with its shard and key as it was met)."""

    def __init__(self, count: int, where: str) -> None:
        super().__init__(torch.zeros(count, dtype=torch.long), None, "RGB")
        self.where = where

    def name(self, i: int) -> str:
        return f"sample {i}"

    def open(self, i: int):
        raise BadImageError(f"sample {i} (its shard and key are in the warnings above)")


def stored(shards: Shards, decoder: ShardDecoder, cfg: DataConfig, progress: bool) -> ImageSplit:
    """Every sample of ``shards`` decoded once into a store, with its label (a validation split)."""
    fingerprint = hashlib.sha256(json.dumps([shards.identity, list(decoder.image_size), *decoder.settings()])
                                 .encode()).hexdigest()[:16]
    slug = re.sub(r"[^A-Za-z0-9._-]+", "_", shards.where).strip("_.")[-48:]
    cache_file = cfg.resolved_cache_dir() / "tensors" / f"{slug}-{fingerprint}.safetensors"
    shape = (1 if decoder.mode == "L" else 3, *decoder.image_size)
    stream = ShardSplit(shards, decoder, skip_bad=False, shuffle_buffer=0, mark=shape)
    images, bad, labels = decode_once(stream, cache_file, shape, cfg.num_workers,
                                      f"decoding {shards.where} (once, cached)", progress)
    return without_bad_images(ImageSplit(labels, images=images), bad, _Listed(len(labels), shards.where), shards.where,
                              cfg.skip_bad_images)


# ----------------------------------------------------------------------------- writing shards


class _Encoded(DecodedImages):
    """Image files re-encoded as JPEG (or PNG, ``quality=None``), shorter side at most ``max_size``: shard payloads."""

    def __init__(self, files: list[Path], labels: list[int], mode: str, max_size: int, quality: int | None) -> None:
        super().__init__(labels, None, mode)
        self.files, self.max_size, self.quality = files, max_size, quality

    def __getitem__(self, i: int) -> tuple[bytes, int]:
        from PIL import Image

        try:
            image = open_image(self.files[i], self.mode)
        except BadImageError:
            return b"", -1
        scale = self.max_size / min(image.size)
        if scale < 1:
            image = image.resize((max(1, round(image.width * scale)), max(1, round(image.height * scale))),
                                 Image.Resampling.BICUBIC, reducing_gap=3.0)
        out = io.BytesIO()
        if self.quality is None:
            image.save(out, format="PNG")
        else:
            image.save(out, format="JPEG", quality=self.quality)
        return out.getvalue(), int(self.labels[i])


def write_shards(source: Path, out: Path, max_size: int = 256, quality: int | None = 90, per_shard: int = 2000,
                 seed: int = 0, skip_bad: bool = False, num_workers: int = 2, progress: bool = True) -> dict[str, int]:
    """An image folder (train/ and val/ of class folders) as WebDataset shards under ``out``: ``train/`` and ``val/``
    of ``per_shard`` samples each, in a seeded random order (so every shard mixes the classes), images re-encoded
    as JPEG of ``quality`` with the shorter side at most ``max_size``, and ``classes.txt``. Each shard is written
    atomically; existing shards are not overwritten. Returns the samples written per split."""
    from tqdm.auto import tqdm

    from vitlab.data.datasets import _list_images, class_names, split_mode

    train_dir = source / "train"
    val_dir = next((source / v for v in ("val", "valid", "validation", "test") if (source / v).is_dir()), None)
    if not train_dir.is_dir() or val_dir is None:
        raise DataNotFoundError(f"{source} needs train/ and val/ folders of class folders to be written as shards")
    if any(out.glob("*/*.tar")):
        raise FileExistsError(f"{out} already holds shards; choose an empty folder")
    for stale in out.glob("*/.*.partial"):  # left by a killed write
        stale.unlink()
    classes = class_names(train_dir)
    written = {}
    for split, folder in (("train", train_dir), ("val", val_dir)):
        files, labels = _list_images(folder, classes)
        order = torch.randperm(len(files), generator=torch.Generator().manual_seed(seed)).tolist()
        files, labels = [files[i] for i in order], [labels[i] for i in order]
        encoded = _Encoded(files, labels, split_mode(files), max_size, quality)
        loader = torch.utils.data.DataLoader(encoded, batch_size=None, num_workers=num_workers)
        bad, shard, count = [], None, 0
        ext = "png" if quality is None else "jpg"
        for i, (data, label) in enumerate(tqdm(loader, total=len(files), desc=f"shards [{split}]", disable=not progress)):
            if label < 0:
                bad.append(str(files[i]))
                continue
            if count % per_shard == 0:
                shard = _next_shard(shard, out / split / f"{split}-{count // per_shard:06d}.tar")
            _add(shard[1], f"{count:08d}.{ext}", data)
            _add(shard[1], f"{count:08d}.cls", str(label).encode())
            count += 1
        _next_shard(shard, None)
        if bad and not skip_bad:
            raise BadImageError(f"{len(bad)} image(s) under {folder} cannot be decoded: {', '.join(bad[:5])}; "
                                f"{SKIP_HINT} (shards written so far are kept)")
        if bad:
            log.warning("%s: %d image(s) could not be decoded and are left out: %s", folder, len(bad), ", ".join(bad[:5]))
        written[split] = count
    atomic_write_text(out / "classes.txt", "".join(f"{name}\n" for name in classes))
    return written


def _add(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size, info.mode = len(data), 0o644
    tar.addfile(info, io.BytesIO(data))


def _next_shard(current, path: Path | None):
    """Close the current shard (renamed into place) and open the one at ``path``: (path, tar, temporary path)."""
    if current is not None:
        target, tar, tmp = current
        tar.close()
        atomic_write(target, lambda dst: Path(tmp).replace(dst))
    if path is None:
        return None
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.partial")
    return path, tarfile.open(tmp, "w"), tmp
