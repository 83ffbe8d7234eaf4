"""Batches of uint8 images from an :class:`ImageSplit`, in a seeded order."""

from __future__ import annotations

import queue
import threading
from collections.abc import Iterable, Iterator
from typing import TypeVar

import torch

from vitlab.data.datasets import ImageSplit


def iterate_batches(
    split: ImageSplit,
    batch_size: int,
    shuffle: bool = False,
    generator: torch.Generator | None = None,
    num_workers: int = 0,
    shard: tuple[int, int] | None = None,
    pin_memory: bool = False,
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Yield (uint8 images (B, C, H, W), int64 labels (B,)); the last batch may be smaller.

    ``shard=(rank, world_size)``: ``batch_size`` is the global batch and this process gets the
    rank-th equal part of each one (data-parallel training). A last global batch too small to
    give every process an image is dropped, so all processes take the same number of steps.
    A store's batches are read ahead of use by a background thread (from disk while the model computes), as are
    batches put in page-locked memory with ``pin_memory`` (for a non-blocking copy to CUDA). A split read from
    shards comes from DataLoader workers instead (:func:`_shard_batches`).
    """
    if split.shards is not None:
        yield from _shard_batches(split, batch_size, shuffle, generator, num_workers, shard, pin_memory)
        return
    n = len(split)
    order = torch.randperm(n, generator=generator) if shuffle else torch.arange(n)
    batches = list(order.split(batch_size))
    if shard is not None and shard[1] > 1:
        rank, world = shard
        batches = [chunk.tensor_split(world)[rank] for chunk in batches if len(chunk) >= world]
    if split.images is not None:
        gathered = ((split.images[index], split.labels[index]) for index in batches)
        if isinstance(split.images, torch.Tensor) and not pin_memory:
            # in memory, a batch is gathered in microseconds: no thread, whose tensor work would start a second team
            # of OpenMP threads competing with the model's for the cores (a 2-core MNIST step ran 1.7x slower)
            yield from gathered
        else:
            yield from prefetched(((x.pin_memory(), y.pin_memory()) for x, y in gathered) if pin_memory else gathered)
        return
    if not batches:
        return
    loader = torch.utils.data.DataLoader(split.stream, batch_sampler=[b.tolist() for b in batches],
                                         num_workers=num_workers, persistent_workers=False, pin_memory=pin_memory)
    for images, labels in loader:
        labels = torch.as_tensor(labels, dtype=torch.long)
        keep = labels >= 0  # images that could not be decoded (--data.skip_bad_images) are left out
        yield (images, labels) if bool(keep.all()) else (images[keep], labels[keep])


def _shard_batches(split: ImageSplit, batch_size: int, shuffle: bool, generator: torch.Generator | None,
                   num_workers: int, shard: tuple[int, int] | None, pin_memory: bool) -> Iterator:
    """Batches of a split read from shards (:mod:`vitlab.data.shards`): shuffled, ``len // batch_size`` full batches for
    every process; in order, every sample once (this process's share of the shards under torchrun)."""
    rank, world = shard if shard is not None else (0, 1)
    if shuffle:
        seed = int(torch.randint(2**31 - 1, (1,), generator=generator))  # the epoch's, the same in every process
        epoch = split.shards.epoch(seed, rank, world, batch_size, num_batches(split, batch_size, world))
        loader = torch.utils.data.DataLoader(epoch, batch_size=None, num_workers=num_workers, pin_memory=pin_memory)
    else:
        loader = torch.utils.data.DataLoader(split.shards, batch_size=batch_size, num_workers=num_workers,
                                             pin_memory=pin_memory)
    for images, labels in loader:
        yield images, torch.as_tensor(labels, dtype=torch.long)


def num_batches(split: ImageSplit, batch_size: int, world_size: int = 1) -> int:
    """Steps per epoch, as :func:`iterate_batches` makes them (``world_size`` processes sharing each batch)."""
    if split.shards is not None:  # full batches only, the same number in every process
        return len(split) // batch_size
    full, rest = divmod(len(split), batch_size)
    return full + (1 if rest >= world_size else 0)


T = TypeVar("T")
_DONE = object()


def prefetched(items: Iterable[T], depth: int = 2) -> Iterator[T]:
    """``items`` in order, each made by a background thread up to ``depth`` ahead of its use; an exception there is
    raised here, and stopping early (``close()``, ``break``) stops the thread."""
    ready: queue.Queue = queue.Queue(maxsize=depth)
    stop = threading.Event()

    def offer(item) -> bool:
        """Put ``item`` when there is room; False once the consumer has stopped."""
        while not stop.is_set():
            try:
                ready.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def produce() -> None:
        try:
            for item in items:
                if not offer(item):
                    return
            offer(_DONE)
        except BaseException as exc:  # handed to the consumer, raised there
            offer(exc)

    worker = threading.Thread(target=produce, name="vitlab-prefetch", daemon=True)
    worker.start()
    try:
        while (item := ready.get()) is not _DONE:
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        stop.set()
        worker.join(timeout=5)
