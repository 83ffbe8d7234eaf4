"""Optimiser and learning-rate schedule."""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Sequence

import torch
from torch import nn

from vitlab.config import FinetuneConfig, TrainConfig


def layer_id(name: str, depth: int) -> int:
    """Depth of a parameter for layer-wise lr decay: embeddings 0, block i -> i + 1, final norm and head depth + 1."""
    if name.startswith(("cls_token", "pos_embed", "patch_embed")):
        return 0
    if name.startswith("blocks."):
        return int(name.split(".")[1]) + 1
    return depth + 1


def param_groups(model: nn.Module, weight_decay: float, layer_decay: float = 1.0) -> list[dict]:
    """Parameter groups: decayed weights, and everything exempt from decay, per layer.

    Exempt from decay: 1-D parameters (LayerNorm weights, all biases) and the names the model
    lists in ``no_weight_decay()`` (position embedding, CLS token). Each group carries
    ``lr_scale`` (``layer_decay ** (depth + 1 - layer)``, 1 for the head) and ``is_head``.
    """
    skip = set(model.no_weight_decay()) if hasattr(model, "no_weight_decay") else set()
    depth = len(getattr(model, "blocks", []))
    groups: dict[tuple[int, bool, bool], dict] = {}
    for name, param in model.named_parameters():
        layer = layer_id(name, depth) if layer_decay != 1.0 else 0
        decayed = not (param.ndim <= 1 or name in skip)
        is_head = name.startswith("head.")
        key = (layer, decayed, is_head)
        if key not in groups:
            groups[key] = {"params": [], "weight_decay": weight_decay if decayed else 0.0,
                           "lr_scale": layer_decay ** (depth + 1 - layer) if layer_decay != 1.0 else 1.0, "is_head": is_head}
        groups[key]["params"].append(param)
    return list(groups.values())


def build_optimizer(model: nn.Module, cfg: TrainConfig, ft: FinetuneConfig | None = None) -> torch.optim.Optimizer:
    """AdamW (or Adam, SGD) over :func:`param_groups`; every group's lr is ``cfg.lr * lr_scale``.

    Frozen parameters stay in the optimizer (a staged fine-tune unfreezes them later); they
    get no gradient while frozen, so no update.
    """
    groups = param_groups(model, cfg.weight_decay, ft.layer_decay if ft is not None else 1.0)
    for group in groups:
        group["lr"] = cfg.lr * group["lr_scale"]
    if cfg.optimizer == "adamw":
        return torch.optim.AdamW(groups, lr=cfg.lr, betas=cfg.betas)
    if cfg.optimizer == "adam":  # L2 penalty through the gradient (the classic, non-decoupled form)
        return torch.optim.Adam(groups, lr=cfg.lr, betas=cfg.betas)
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=cfg.lr, momentum=0.9, nesterov=True)
    raise ValueError(f"unknown optimizer {cfg.optimizer!r}; choose adamw, adam or sgd")


def lr_factor(step: int, total_steps: int, warmup_steps: int, schedule: str, min_ratio: float) -> float:
    """Multiplier of the base learning rate at ``step``: linear warm-up, then cosine, linear or constant."""
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    if schedule == "constant":
        return 1.0
    progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
    if schedule == "linear":  # straight down to min_lr at the last step (Li et al. 2020, "Budgeted Training")
        return min_ratio + (1 - min_ratio) * (1 - progress)
    return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))


def build_scheduler(optimizer: torch.optim.Optimizer, cfg: TrainConfig, steps_per_epoch: int,
                    ft: FinetuneConfig | None = None, steps_done: int = 0, epoch_scales: Sequence[float] = ()):
    """A per-step ``LambdaLR``: warm-up over ``warmup_epochs``, then cosine (or linear) down to ``min_lr``.

    ``steps_done``: continue a run ``steps_done`` steps in (the optimizer's rates are set for the
    next step), as when a time budget re-plans the number of epochs after the first one.

    A staged fine-tune gives the backbone its own schedule: nothing during the head-only
    epochs, then warm-up and cosine at ``backbone_lr_scale`` times the rate.

    ``epoch_scales[e]`` multiplies every rate during epoch ``e`` (1 after the last), as for progressive resizing.
    """
    total = cfg.epochs * steps_per_epoch
    warmup = int(round(cfg.warmup_epochs * steps_per_epoch))
    min_ratio = cfg.min_lr / cfg.lr if cfg.lr > 0 else 0.0
    whole = functools.partial(lr_factor, total_steps=total, warmup_steps=warmup, schedule=cfg.schedule, min_ratio=min_ratio)
    factors = [whole]
    if ft is not None and ft.mode == "staged":
        start = ft.head_epochs * steps_per_epoch
        later = functools.partial(_after_start, start=start, scale=ft.backbone_lr_scale, total=total - start, warmup=warmup,
                                  schedule=cfg.schedule, min_ratio=min_ratio)
        factors = [whole if g["is_head"] else later for g in optimizer.param_groups]
    if any(scale != 1.0 for scale in epoch_scales):  # scales of 1 change nothing: no wrapper
        factors = [functools.partial(_epoch_scaled, factor=f, steps_per_epoch=steps_per_epoch, scales=tuple(epoch_scales))
                   for f in factors]
    return torch.optim.lr_scheduler.LambdaLR(optimizer, factors if len(factors) > 1 else factors[0],
                                             last_epoch=steps_done - 1)


def _after_start(step: int, start: int, scale: float, total: int, warmup: int, schedule: str, min_ratio: float) -> float:
    if step < start:
        return 0.0
    return scale * lr_factor(step - start, total, warmup, schedule, min_ratio)


def _epoch_scaled(step: int, factor: Callable[[int], float], steps_per_epoch: int, scales: tuple[float, ...]) -> float:
    epoch = step // steps_per_epoch
    return factor(step) * (scales[epoch] if epoch < len(scales) else 1.0)
