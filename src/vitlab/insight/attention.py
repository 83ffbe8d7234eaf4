"""Where the ViT looks: attention weights, attention rollout and maps laid over the image.

Attention rollout (Abnar & Zuidema, 2020, "Quantifying Attention Flow in Transformers"): the
residual connection is accounted for by adding the identity to each layer's (head-fused)
attention and renormalising the rows; the layers are then multiplied from the first to the
last, giving how much each input token flows into each output token.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Literal

import torch
import torch.nn.functional as F

from vitlab.model import ViT

HeadFusion = Literal["mean", "max", "min"]


@torch.no_grad()
def attention_maps(model: ViT, images: torch.Tensor, layers: Sequence[int] | None = None
                   ) -> tuple[torch.Tensor, dict[int, torch.Tensor]]:
    """Logits and attention weights ``{layer: (B, heads, T, T)}`` of a normalised image batch.

    Only ``layers`` are recorded when given (negative indices count from the end), which saves
    memory on deep models. The recorded layers run the explicit attention path whatever
    ``attn_impl`` the model uses, so no weights are ever missing. The model runs in eval mode.
    """
    was_training = model.training
    model.eval()
    try:
        logits, maps = model.forward_attention(images, None if layers is None else list(layers))
    finally:
        model.train(was_training)
    return logits, maps


def fuse_heads(attention: torch.Tensor, head_fusion: HeadFusion = "mean") -> torch.Tensor:
    """(B, heads, T, T) -> (B, T, T) by the mean, max or min over heads."""
    if head_fusion == "mean":
        return attention.mean(1)
    if head_fusion == "max":
        return attention.amax(1)
    if head_fusion == "min":
        return attention.amin(1)
    raise ValueError(f"head_fusion={head_fusion!r}; choose mean, max or min")


def attention_rollout(maps: Mapping[int, torch.Tensor] | Sequence[torch.Tensor], head_fusion: HeadFusion = "mean",
                      discard_ratio: float = 0.0, num_prefix_tokens: int = 1) -> torch.Tensor:
    """Rolled-out attention (B, T, T) from every layer's weights, first layer first.

    ``discard_ratio`` zeroes that fraction of the weakest fused weights of each image and layer
    before the identity is added (attention from the prefix tokens to themselves is always kept),
    which sharpens maps of models whose attention is spread thin.
    """
    layers = [maps[k] for k in sorted(maps)] if isinstance(maps, Mapping) else list(maps)
    if not layers:
        raise ValueError("attention rollout needs the attention weights of at least one layer")
    if not 0.0 <= discard_ratio < 1.0:
        raise ValueError(f"discard_ratio={discard_ratio} must be in [0, 1)")
    b, _, t, _ = layers[0].shape
    eye = torch.eye(t, dtype=layers[0].dtype, device=layers[0].device)
    rollout = eye.expand(b, t, t)
    for attention in layers:
        fused = fuse_heads(attention.float() if attention.dtype != torch.float64 else attention, head_fusion)
        if discard_ratio > 0:
            flat = fused.reshape(b, -1).clone()
            protected = torch.zeros(t, t, dtype=torch.bool, device=fused.device)
            protected[:num_prefix_tokens, :num_prefix_tokens] = True
            scores = flat.masked_fill(protected.flatten(), float("inf"))
            k = int(flat.shape[1] * discard_ratio)
            if k:
                weakest = scores.topk(k, dim=1, largest=False).indices
                flat.scatter_(1, weakest, 0.0)
            fused = flat.view(b, t, t)
        with_residual = fused + eye
        with_residual = with_residual / with_residual.sum(-1, keepdim=True)
        rollout = with_residual @ rollout
    return rollout


def token_map(matrix: torch.Tensor, grid_size: tuple[int, int], num_prefix_tokens: int = 1) -> torch.Tensor:
    """What the read-out attends to, as patch-grid maps.

    ``matrix`` is (..., T, T) (rows: queries). With a CLS token its row is used; without one
    (average pooling) the rows of all patch tokens are averaged. Returns (..., gh, gw).
    """
    rows = matrix[..., 0, :] if num_prefix_tokens else matrix.mean(-2)
    return rows[..., num_prefix_tokens:].reshape(*rows.shape[:-1], *grid_size)


def rollout_and_heads(model: ViT, images: torch.Tensor, head_fusion: HeadFusion = "mean", discard_ratio: float = 0.0,
                      layer: int = -1) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """One forward pass of a normalised image batch: logits, attention-rollout maps (B, gh, gw)
    and ``layer``'s (default the last) read-out attention per head (B, heads, gh, gw)."""
    logits, maps = attention_maps(model, images)
    grid, prefix = model.cfg.grid_size, model.num_prefix_tokens
    rollout = token_map(attention_rollout(maps, head_fusion, discard_ratio, prefix), grid, prefix)
    return logits, rollout, token_map(maps[sorted(maps)[layer]], grid, prefix)


def normalise_map(heat: torch.Tensor) -> torch.Tensor:
    """Scale each map (..., H, W) to [0, 1]."""
    flat = heat.flatten(-2)
    lo, hi = flat.amin(-1, keepdim=True), flat.amax(-1, keepdim=True)
    return ((flat - lo) / (hi - lo).clamp(min=1e-12)).view_as(heat)


def upsample_map(heat: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Patch-grid maps (..., gh, gw) -> image-size maps (..., H, W), bilinear, in [0, 1]."""
    lead = heat.shape[:-2]
    up = F.interpolate(heat.reshape(-1, 1, *heat.shape[-2:]).float(), size=size, mode="bilinear", align_corners=False)
    return normalise_map(up.reshape(*lead, *size))


def overlay(image: torch.Tensor, heat: torch.Tensor, alpha: float = 0.5, cmap: str = "jet") -> torch.Tensor:
    """Blend a map over an image: uint8 (C, H, W) image, (gh, gw) or (H, W) map -> float (H, W, 3) in [0, 1]."""
    from matplotlib import colormaps

    rgb = image.float().div(255)
    rgb = rgb.expand(3, -1, -1) if rgb.shape[0] == 1 else rgb[:3]
    size = tuple(rgb.shape[-2:])
    heat = upsample_map(heat, size) if tuple(heat.shape[-2:]) != size else normalise_map(heat)
    colour = torch.from_numpy(colormaps[cmap](heat.cpu().numpy())[..., :3]).float()
    return ((1 - alpha) * rgb.permute(1, 2, 0).cpu() + alpha * colour).clamp(0, 1)
