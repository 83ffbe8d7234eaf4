"""``vitlab info``: what a preset or checkpoint is made of."""

from __future__ import annotations

from dataclasses import replace

import torch

from vitlab.model import ViT, count_flops
from vitlab.resolve import resolve_model


def describe(name: str, num_classes: int | None = None) -> str:
    cfg = resolve_model(name)
    if num_classes is not None:
        cfg = replace(cfg, num_classes=num_classes)
    torch.manual_seed(0)
    model = ViT(cfg)
    flops = count_flops(model)
    groups = {
        "patch_embed": model.patch_embed, "cls_token + pos_embed": None, "blocks": model.blocks,
        "norm": model.norm, "head": model.head,
    }
    lines = [f"{name}: ViT, {cfg.img_size[0]}x{cfg.img_size[1]}x{cfg.in_chans} images, "
             f"{cfg.patch_size[0]}x{cfg.patch_size[1]} patches -> {cfg.num_patches} tokens"
             f"{' + CLS' if cfg.class_token else ''}",
             f"  width {cfg.embed_dim}, depth {cfg.depth}, heads {cfg.num_heads} (head dim "
             f"{cfg.embed_dim // cfg.num_heads}), MLP {int(cfg.embed_dim * cfg.mlp_ratio)}, {cfg.num_classes} classes",
             f"  patch embedding {cfg.patch_embed}, position embedding {cfg.pos_embed}, pooling {cfg.pool}, "
             f"attention {cfg.attn_impl}",
             f"  dropout {cfg.drop_rate}, attention dropout {cfg.attn_drop_rate}, drop path {cfg.drop_path_rate}",
             "", "parameters:"]
    for label, module in groups.items():
        if module is None:
            count = sum(p.numel() for p in (model.cls_token, model.pos_embed) if isinstance(p, torch.nn.Parameter))
        else:
            count = sum(p.numel() for p in module.parameters())
        lines.append(f"  {label:<24}{count:>14,}")
    lines += [f"  {'total':<24}{model.num_params():>14,}", "",
              f"forward FLOPs per image: {flops:,} ({flops / 1e9:.3f} GFLOPs; a multiply-add counts 2)", "",
              str(model)]
    return "\n".join(lines)
