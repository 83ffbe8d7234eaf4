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
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Yield (uint8 images (B, C, H, W), int64 labels (B,)); the last batch may be smaller."""
    n = len(split)
    order = torch.randperm(n, generator=generator) if shuffle else torch.arange(n)
    if split.images is not None:
        for start in range(0, n, batch_size):
            index = order[start : start + batch_size]
            yield split.images[index], split.labels[index]
        return
    loader = torch.utils.data.DataLoader(
        split.stream, batch_size=batch_size, sampler=order.tolist(), num_workers=num_workers,
        persistent_workers=False,
    )
    for images, labels in loader:
        yield images, torch.as_tensor(labels, dtype=torch.long)


def num_batches(split: ImageSplit, batch_size: int) -> int:
    return (len(split) + batch_size - 1) // batch_size
