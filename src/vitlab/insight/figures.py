"""The ViT paper's figure 7 for any model: what the patch embedding, the position embeddings
and the attention heads learned (Dosovitskiy et al. 2021, figures 7 and 11).
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
import torch.nn.functional as F
from matplotlib.figure import Figure

from vitlab.model import ViT


def position_similarity(model: ViT) -> torch.Tensor:
    """Cosine similarity of each patch's position embedding with every other patch's: (gh, gw, gh, gw)."""
    if model.pos_embed is None:
        raise ValueError("this model has no position embedding (pos_embed='none'), so there is nothing to compare")
    table = model.pos_embed.detach()[0, model.num_prefix_tokens:].float()
    table = F.normalize(table, dim=-1)
    gh, gw = model.cfg.grid_size
    return (table @ table.T).view(gh, gw, gh, gw)


def patch_filter_components(model: ViT, count: int = 28) -> tuple[torch.Tensor, torch.Tensor]:
    """Principal components of the patch-embedding filters, as (count, C, ph, pw) images, and the
    fraction of variance each explains."""
    if model.patch_embed.stem is not None:
        raise ValueError("a conv_stem patch embedding has no per-patch pixel filters (its projection is 1x1 over "
                         "CNN features); the filter figure needs patch_embed='conv' or 'manual'")
    weight = model.patch_embed.proj.weight.detach().float()  # (D, C, ph, pw)
    flat = weight.flatten(1)
    flat = flat - flat.mean(0, keepdim=True)
    _, s, vh = torch.linalg.svd(flat, full_matrices=False)
    count = min(count, vh.shape[0])
    explained = s**2 / (s**2).sum()
    return vh[:count].view(count, *weight.shape[1:]), explained[:count]


def patch_distances(grid_size: tuple[int, int], patch_size: tuple[int, int]) -> torch.Tensor:
    """Pixel distance between the centres of every pair of patches: (N, N)."""
    gh, gw = grid_size
    ys, xs = torch.meshgrid(torch.arange(gh) * patch_size[0], torch.arange(gw) * patch_size[1], indexing="ij")
    centres = torch.stack([ys.flatten(), xs.flatten()], 1).float()
    return torch.cdist(centres, centres)


def mean_attention_distance(maps: Mapping[int, torch.Tensor], grid_size: tuple[int, int],
                            patch_size: tuple[int, int], num_prefix_tokens: int = 1) -> torch.Tensor:
    """Mean attention distance in pixels, (layers, heads), from ``{layer: (B, heads, T, T)}``.

    For every patch query, the pixel distance to each patch key weighted by the attention it
    pays, averaged over queries and images (the paper's "attention distance", figure 7 right).
    Attention to prefix tokens (CLS) has no position, so the weights over patches are
    renormalised to sum to one.
    """
    distances = patch_distances(grid_size, patch_size)
    rows = []
    for layer in sorted(maps):
        patches = maps[layer][:, :, num_prefix_tokens:, num_prefix_tokens:].float()
        patches = patches / patches.sum(-1, keepdim=True).clamp(min=1e-12)
        rows.append((patches * distances.to(patches.device)).sum(-1).mean(dim=(0, 2)))
    return torch.stack(rows)


# ----------------------------------------------------------------------------- plots


def _mosaic(tiles: torch.Tensor, cols: int, gap: int = 1) -> torch.Tensor:
    """(n, h, w[, 3]) tiles -> one image with NaN (blank) gaps, ``cols`` tiles per row."""
    n, h, w = tiles.shape[:3]
    rows = -(-n // cols)
    out = torch.full((rows * (h + gap) - gap, cols * (w + gap) - gap, *tiles.shape[3:]), float("nan"))
    for i in range(n):
        r, c = divmod(i, cols)
        out[r * (h + gap): r * (h + gap) + h, c * (w + gap): c * (w + gap) + w] = tiles[i]
    return out


def plot_position_similarity(similarity: torch.Tensor, title: str = "Position embedding similarity") -> Figure:
    """One small heat map per patch (its cosine similarity to all patches), laid out on the patch grid."""
    gh, gw = similarity.shape[:2]
    mosaic = _mosaic(similarity.reshape(gh * gw, gh, gw), cols=gw)
    fig = Figure(figsize=(7.5, 7.0 * gh / gw + 0.8), layout="constrained")
    ax = fig.add_subplot()
    image = ax.imshow(mosaic.numpy(), cmap="viridis", vmin=-1, vmax=1, interpolation="nearest")
    ax.set_xticks([(gw + 1) * c + (gw - 1) / 2 for c in range(gw)], [str(c + 1) for c in range(gw)], fontsize=6)
    ax.set_yticks([(gh + 1) * r + (gh - 1) / 2 for r in range(gh)], [str(r + 1) for r in range(gh)], fontsize=6)
    ax.set_xlabel("input patch column")
    ax.set_ylabel("input patch row")
    ax.set_title(title, fontsize=10)
    fig.colorbar(image, ax=ax, shrink=0.6, label="cosine similarity")
    return fig


def plot_filter_components(components: torch.Tensor, explained: torch.Tensor,
                           title: str = "Principal components of the patch-embedding filters") -> Figure:
    """Each component as a small image (RGB when the model has 3 channels, gray otherwise)."""
    count, channels = components.shape[:2]
    flat = components.flatten(1)
    lo, hi = flat.amin(1).view(-1, 1, 1, 1), flat.amax(1).view(-1, 1, 1, 1)
    images = (components - lo) / (hi - lo).clamp(min=1e-12)
    tiles = images.permute(0, 2, 3, 1) if channels == 3 else images.mean(1)
    cols = min(7, count)
    fig = Figure(figsize=(1.1 * cols, 1.1 * -(-count // cols) + 0.6), layout="constrained")
    ax = fig.add_subplot()
    ax.imshow(_mosaic(tiles, cols, gap=1).nan_to_num(1.0).numpy(), cmap=None if channels == 3 else "gray",
              interpolation="nearest")
    ax.axis("off")
    ax.set_title(f"{title}\n(first {count} explain {explained.sum().item():.0%} of the variance)", fontsize=9)
    return fig


def plot_attention_distance(distance: torch.Tensor, image_size: tuple[int, int],
                            title: str = "Mean attention distance") -> Figure:
    """One dot per head against its layer (paper figure 7 right)."""
    layers, heads = distance.shape
    fig = Figure(figsize=(5.2, 3.8), layout="constrained")
    ax = fig.add_subplot()
    for h in range(heads):
        ax.scatter(torch.arange(layers).numpy() + 1, distance[:, h].numpy(), s=14, label=f"head {h + 1}")
    ax.set_xlabel("network depth (layer)")
    ax.set_ylabel("mean attention distance (pixels)")
    ax.set_ylim(0, max(image_size) * 0.75)
    ax.set_xticks(range(1, layers + 1))
    ax.grid(alpha=0.3)
    if heads <= 12:
        ax.legend(fontsize=6, ncol=2, loc="lower right")
    ax.set_title(title, fontsize=10)
    return fig
