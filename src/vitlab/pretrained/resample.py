"""Resample a learned position embedding to another patch grid (another image or patch size)."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def resample_pos_embed(
    pos_embed: torch.Tensor,
    new_grid: tuple[int, int],
    old_grid: tuple[int, int] | None = None,
    num_prefix_tokens: int = 1,
    interpolation: str = "bicubic",
    antialias: bool = True,
) -> torch.Tensor:
    """(1, prefix + H*W, D) -> (1, prefix + H'*W', D): the patch part interpolated as a 2-D image.

    Prefix tokens (CLS) keep their embedding unchanged. ``old_grid`` defaults to a square grid.
    Grids may be non-square (e.g. a 224 checkpoint fine-tuned on 160x224 images).
    """
    prefix, patches = pos_embed[:, :num_prefix_tokens], pos_embed[:, num_prefix_tokens:]
    n, dim = patches.shape[1], patches.shape[2]
    if old_grid is None:
        side = int(round(n**0.5))
        if side * side != n:
            raise ValueError(f"position embedding has {n} patch positions, not a square grid: pass old_grid")
        old_grid = (side, side)
    if old_grid[0] * old_grid[1] != n:
        raise ValueError(f"old_grid {old_grid} does not match the {n} patch positions of the embedding")
    new_grid = (int(new_grid[0]), int(new_grid[1]))
    if tuple(old_grid) == new_grid:
        return pos_embed
    image = patches.reshape(1, old_grid[0], old_grid[1], dim).permute(0, 3, 1, 2).float()
    image = F.interpolate(image, size=new_grid, mode=interpolation, align_corners=False,
                          antialias=antialias and interpolation in ("bilinear", "bicubic"))
    patches = image.permute(0, 2, 3, 1).reshape(1, new_grid[0] * new_grid[1], dim).to(pos_embed.dtype)
    return torch.cat([prefix, patches], dim=1)
