"""Batches of uint8 images from an :class:`ImageSplit`, in a seeded order."""

from __future__ import annotations

from collections.abc import Iterator

import torch

from vitlab.data.datasets import ImageSplit


def iterate_batches(
    split: ImageSplit,
    batch_size: int,
    shuffle: bool = False,
    generator: torch.Generator | None = None,
    num_workers: int = 0,
    shard: tuple[int, int] | None = None,
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Yield (uint8 images (B, C, H, W), int64 labels (B,)); the last batch may be smaller.

    ``shard=(rank, world_size)``: ``batch_size`` is the global batch and this process gets the
    rank-th equal part of each one (data-parallel training). A last global batch too small to
    give every process an image is dropped, so all processes take the same number of steps.
    """
    n = len(split)
    order = torch.randperm(n, generator=generator) if shuffle else torch.arange(n)
    batches = list(order.split(batch_size))
    if shard is not None and shard[1] > 1:
        rank, world = shard
        batches = [chunk.tensor_split(world)[rank] for chunk in batches if len(chunk) >= world]
    if split.images is not None:
        for index in batches:
            yield split.images[index], split.labels[index]
        return
    if not batches:
        return
    loader = torch.utils.data.DataLoader(split.stream, batch_sampler=[b.tolist() for b in batches],
                                         num_workers=num_workers, persistent_workers=False)
    for images, labels in loader:
        labels = torch.as_tensor(labels, dtype=torch.long)
        keep = labels >= 0  # images that could not be decoded (--data.skip_bad_images) are left out
        yield (images, labels) if bool(keep.all()) else (images[keep], labels[keep])


def num_batches(split: ImageSplit, batch_size: int, world_size: int = 1) -> int:
    """Steps per epoch, as :func:`iterate_batches` makes them (``world_size`` processes sharing each batch)."""
    full, rest = divmod(len(split), batch_size)
    return full + (1 if rest >= world_size else 0)
