"""The decoded-image store: every image decoded once, straight into a memory-mapped file, read through the page cache.

A store is one safetensors file in the cache (``images``: uint8 (N, C, H, W); ``bad``: which images could not
be decoded). It is written by one process at a time under a file lock (torchrun ranks and parallel sweep
trials on a cold cache wait for the first writer, then share its file), into a temporary file mapped into
memory, then renamed into place, so anonymous memory stays at a batch whatever the data's size and a kill
never leaves half a store. Readers map it (safetensors) and share the operating system's page cache.
"""

from __future__ import annotations

import json
import logging
import math
import os
import struct
import warnings
from pathlib import Path

import numpy as np
import torch
from filelock import FileLock
from torch.utils.data import Dataset

from vitlab.atomic import atomic_write

log = logging.getLogger(__name__)
BATCH = 256


def decode_once(dataset: Dataset, cache_file: Path, shape: tuple[int, ...], num_workers: int, desc: str,
                progress: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """(images, bad): read ``cache_file``, or decode every (image, label) of ``dataset`` into it first; an image
    the dataset gave label -1 could not be decoded and is marked in ``bad``."""
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


def _read(cache_file: Path) -> tuple[torch.Tensor, torch.Tensor] | None:
    """The store's tensors, mapped read-only and shared (``MAP_SHARED``): a private copy-on-write mapping, which
    ``safetensors.torch.load_file`` makes, counts against the kernel's commit limit and fails for a store larger than
    memory; a shared read-only one is backed by the file alone."""
    if not cache_file.exists():
        return None
    try:
        header_len = struct.unpack("<Q", cache_file.open("rb").read(8))[0]
        with cache_file.open("rb") as f:
            f.seek(8)
            header = json.loads(f.read(header_len))
        return _mapped(cache_file, 8 + header_len, header["images"]), _mapped(cache_file, 8 + header_len, header["bad"])
    except Exception as exc:  # a damaged store is rebuilt, not trusted
        log.warning("ignoring unreadable cache %s (%s)", cache_file, exc)
        return None


def _mapped(path: Path, data_start: int, entry: dict) -> torch.Tensor:
    """One tensor of a safetensors file (uint8 or bool), memory-mapped read-only; (images are only ever read: batches
    are gathered copies)."""
    dtype = {"U8": np.uint8, "BOOL": np.bool_}[entry["dtype"]]
    begin, end = entry["data_offsets"]
    shape = tuple(entry["shape"])
    if end - begin != math.prod(shape):
        raise ValueError(f"{path}: {entry} does not match its byte range")
    array = np.memmap(path, dtype=dtype, mode="r", offset=data_start + begin, shape=shape)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # "non-writable": the store is never written through it
        return torch.from_numpy(array)


def _write(dataset: Dataset, path: Path, shape: tuple[int, ...], num_workers: int, desc: str, progress: bool) -> None:
    """A safetensors file whose data is filled batch by batch through a memory map of the file itself."""
    from tqdm.auto import tqdm

    n = len(dataset)
    nbytes = n * math.prod(shape)
    header = json.dumps({"images": {"dtype": "U8", "shape": [n, *shape], "data_offsets": [0, nbytes]},
                         "bad": {"dtype": "BOOL", "shape": [n], "data_offsets": [nbytes, nbytes + n]}},
                        separators=(",", ":")).encode()
    header += b" " * (-len(header) % 8)  # the format pads the header with spaces to 8 bytes
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(header)) + header)
        f.truncate(8 + len(header) + nbytes + n)
    data = np.memmap(path, dtype=np.uint8, mode="r+", offset=8 + len(header), shape=(nbytes + n,))
    images, bad = torch.from_numpy(data[:nbytes]).view(n, *shape), torch.from_numpy(data[nbytes:])
    loader = torch.utils.data.DataLoader(dataset, batch_size=BATCH, num_workers=min(num_workers, os.cpu_count() or 1))
    i = 0
    for batch, labels in tqdm(loader, desc=desc, unit="batch", leave=False, disable=not progress):
        images[i : i + len(batch)] = batch
        bad[i : i + len(batch)] = (torch.as_tensor(labels) < 0).to(torch.uint8)
        i += len(batch)
    data.flush()
    del images, bad, data
