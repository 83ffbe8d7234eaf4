"""The decoded-image store: every image decoded once, straight into a memory-mapped file, read through the page cache.

A store is one safetensors file in the cache (``images``: uint8 (N, C, H, W); ``bad``: which images could not be
decoded; ``labels``: int64, as the source gave them). It is written by one process at a time under a file lock
(torchrun ranks and parallel sweep trials on a cold cache wait for the first writer, then share its file), into a
temporary file mapped into memory, then renamed into place, so anonymous memory stays at a batch whatever the
data's size and a kill never leaves half a store. Readers read it by image (:class:`StoredImages`) through the
operating system's page cache, which all processes share.
"""

from __future__ import annotations

import json
import logging
import math
import os
import struct
from pathlib import Path

import numpy as np
import torch
from filelock import FileLock
from torch.utils.data import Dataset

from vitlab.atomic import atomic_write

log = logging.getLogger(__name__)
BATCH = 256


def decode_once(dataset: Dataset, cache_file: Path, shape: tuple[int, ...], num_workers: int, desc: str,
                progress: bool) -> tuple[StoredImages, torch.Tensor, torch.Tensor]:
    """(images, bad, labels): read ``cache_file``, or decode every (image, label) of ``dataset`` into it first (a
    map-style data set, or an iterable one of known length); an image the dataset gave label -1 could not be decoded
    and is marked in ``bad``."""
    locks = cache_file.parent.with_name(cache_file.parent.name + "-locks")  # beside the stores, not among them
    locks.mkdir(parents=True, exist_ok=True)
    with FileLock(str(locks / f"{cache_file.stem}.lock")):
        stored = _read(cache_file)
        if stored is None:
            atomic_write(cache_file, lambda tmp: _write(dataset, tmp, shape, num_workers, desc, progress))
            stored = _read(cache_file)
    if stored is None:
        raise OSError(f"the decoded-image store {cache_file} was written but cannot be read back; is the disk full?")
    return stored


def _read(cache_file: Path) -> tuple[StoredImages, torch.Tensor, torch.Tensor] | None:
    """The store's images (read on demand), its ``bad`` mask and labels (in memory), or None."""
    if not cache_file.exists():
        return None
    try:
        with cache_file.open("rb") as f:
            header_len = struct.unpack("<Q", f.read(8))[0]
            header = json.loads(f.read(header_len))
        data_start = 8 + header_len
        images, bad, labels = header["images"], header["bad"], header["labels"]
        n, shape = images["shape"][0], tuple(images["shape"])
        if (images["dtype"], bad["dtype"], bad["shape"], labels["dtype"], labels["shape"]) != ("U8", "BOOL", [n], "I64", [n]) \
                or images["data_offsets"][1] - images["data_offsets"][0] != math.prod(shape):
            raise ValueError(f"unexpected entries {header}")
        mask = np.fromfile(cache_file, dtype=np.uint8, count=n, offset=data_start + bad["data_offsets"][0])
        targets = np.fromfile(cache_file, dtype="<i8", count=n, offset=data_start + labels["data_offsets"][0])
        if len(mask) != n or len(targets) != n or cache_file.stat().st_size < data_start + images["data_offsets"][1]:
            raise ValueError("the file is shorter than its header says")
        return (StoredImages(cache_file, data_start + images["data_offsets"][0], shape), torch.from_numpy(mask).bool(),
                torch.from_numpy(targets.astype(np.int64)))
    except Exception as exc:  # a damaged store is rebuilt, not trusted
        log.warning("ignoring unreadable cache %s (%s)", cache_file, exc)
        return None


class StoredImages:
    """The uint8 images (N, C, H, W) of a store, read by index into new tensors: ``images[index]`` as a tensor's.

    Each run of neighbouring images is one positioned read (``pread``) of a file declared random-access
    (``POSIX_FADV_RANDOM``), so the kernel reads exactly the bytes asked for: page faults on a memory map read
    ahead the device's whole window around each image (8 MiB on this machine's disk, 40 times the bytes of a 224-pixel
    image), which thrashes the page cache once a store is larger than memory. Readers share the page cache, and
    anonymous memory holds one batch. ``take`` selects without reading (subsets of a store larger than memory).
    """

    def __init__(self, path: Path, data_start: int, shape: tuple[int, ...], rows: torch.Tensor | None = None) -> None:
        self.path, self.data_start, self.item_shape = Path(path), data_start, tuple(shape[1:])
        self.stored = shape[0]
        self.rows = rows  # which stored images, in this order (None: all)
        self._fd: int | None = None
        self._pid = 0

    @property
    def shape(self) -> torch.Size:
        return torch.Size((len(self), *self.item_shape))

    dtype = torch.uint8

    def __len__(self) -> int:
        return self.stored if self.rows is None else len(self.rows)

    def __iter__(self):
        for start in range(0, len(self), 256):
            yield from self[start : start + 256]

    def take(self, index: torch.Tensor) -> StoredImages:
        """The images at ``index``, still on disk."""
        return StoredImages(self.path, self.data_start, (self.stored, *self.item_shape), self._rows(index))

    def __getitem__(self, index) -> torch.Tensor:
        if isinstance(index, tuple):  # images[index, channel, ...]: the images first, then the rest as a tensor's
            return self[index[0]][(slice(None), *index[1:])]
        if isinstance(index, int):
            return self[torch.tensor([index])][0]
        return self._read_rows(self._rows(index))

    def _rows(self, index) -> torch.Tensor:
        """Stored row numbers of ``index`` (a slice, a list or a tensor of positions, or a boolean mask)."""
        positions = torch.arange(len(self))[index] if isinstance(index, slice) else torch.as_tensor(index)
        if positions.dtype == torch.bool:
            positions = positions.nonzero().flatten()
        positions = positions.long().reshape(-1)
        if len(positions) and not -len(self) <= int(positions.min()) <= int(positions.max()) < len(self):
            raise IndexError(f"index out of range for {len(self)} stored images")
        positions = positions % max(1, len(self))
        return positions if self.rows is None else self.rows[positions]

    def _read_rows(self, rows: torch.Tensor) -> torch.Tensor:
        """(len(rows), C, H, W) uint8: the rows sorted, one read per run of consecutive rows, put back in order."""
        out = torch.empty((len(rows), *self.item_shape), dtype=torch.uint8)
        if not len(rows):
            return out
        order = rows.argsort()
        ordered = rows[order]
        in_order = bool((order == torch.arange(len(rows))).all())
        staged = out if in_order else torch.empty_like(out)
        bounds = [0, *((ordered.diff() != 1).nonzero().flatten() + 1).tolist(), len(rows)]
        item_bytes, fd = math.prod(self.item_shape), self._file()
        for begin, end in zip(bounds, bounds[1:]):
            _read_exactly(fd, staged[begin:end].numpy(), self.data_start + int(ordered[begin]) * item_bytes, self.path)
        if not in_order:  # by numpy: in a reading thread, a torch copy would start OpenMP threads beside the model's
            out.numpy()[order.numpy()] = staged.numpy()
        return out

    def _file(self) -> int:
        """This process's descriptor of the store (a forked or unpickled copy opens its own)."""
        if self._fd is None or self._pid != os.getpid():
            self._fd, self._pid = os.open(self.path, os.O_RDONLY), os.getpid()
            if hasattr(os, "posix_fadvise"):
                os.posix_fadvise(self._fd, 0, 0, os.POSIX_FADV_RANDOM)
        return self._fd

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_fd": None, "_pid": 0}

    def __del__(self) -> None:
        if self._fd is not None and self._pid == os.getpid():
            os.close(self._fd)


def _read_exactly(fd: int, into: np.ndarray, offset: int, path: Path) -> None:
    view, done = memoryview(into).cast("B"), 0
    while done < len(view):
        got = os.preadv(fd, [view[done:]], offset + done)
        if got <= 0:
            raise OSError(f"the decoded-image store {path} ends early (truncated?); delete it to decode again")
        done += got


def _write(dataset: Dataset, path: Path, shape: tuple[int, ...], num_workers: int, desc: str, progress: bool) -> None:
    """A safetensors file whose data is filled batch by batch through a memory map of the file itself."""
    from tqdm.auto import tqdm

    n = len(dataset)
    nbytes = n * math.prod(shape)
    entries = {"labels": ("I64", 8 * n), "bad": ("BOOL", n), "images": ("U8", nbytes)}  # labels first: 8-byte aligned
    header, offset = {}, 0
    for name, (dtype, size) in entries.items():
        header[name] = {"dtype": dtype, "shape": [n, *shape] if name == "images" else [n],
                        "data_offsets": [offset, offset + size]}
        offset += size
    encoded = json.dumps(header, separators=(",", ":")).encode()
    encoded += b" " * (-len(encoded) % 8)  # the format pads the header with spaces to 8 bytes
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(encoded)) + encoded)
        f.truncate(8 + len(encoded) + offset)
    data = np.memmap(path, dtype=np.uint8, mode="r+", offset=8 + len(encoded), shape=(offset,))
    labels = torch.from_numpy(data[: 8 * n]).view(torch.int64)
    bad = torch.from_numpy(data[8 * n : 9 * n])
    images = torch.from_numpy(data[9 * n :]).view(n, *shape)
    loader = torch.utils.data.DataLoader(dataset, batch_size=BATCH, num_workers=min(num_workers, os.cpu_count() or 1))
    i = 0
    for batch, targets in tqdm(loader, desc=desc, unit="batch", leave=False, disable=not progress):
        targets = torch.as_tensor(targets)
        if i + len(batch) > n:
            raise ValueError(f"{desc}: the source gave more than the {n} images it counted; has it changed?")
        images[i : i + len(batch)] = batch
        labels[i : i + len(batch)] = targets
        bad[i : i + len(batch)] = (targets < 0).to(torch.uint8)
        i += len(batch)
    if i != n:
        raise ValueError(f"{desc}: the source gave {i} of the {n} images it counted; has it changed?")
    data.flush()
    del images, bad, labels, data
