"""An exponential moving average (EMA) of the weights, through PyTorch's own ``AveragedModel``.

After every optimiser step the average moves towards the trained weights:
``ema = decay_t * ema + (1 - decay_t) * weights`` with ``decay_t = min(decay, (1 + n) / (10 + n))``
after ``n`` updates, so early on, when the weights still change fast, it follows them closely
(the warm-up of TensorFlow's ``ExponentialMovingAverage`` and timm's ``ModelEmaV3``). The
average is what a run validates and saves when ``--train.ema_decay`` is on: it is usually a
little more accurate than the last weights, at the cost of one copy of the model.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.optim.swa_utils import AveragedModel


def ema_decay_at(decay: float, num_updates: int) -> float:
    """The decay used for the update after ``num_updates`` earlier ones (warm-up included)."""
    return min(decay, (1.0 + num_updates) / (10.0 + num_updates))


def weight_ema(model: nn.Module, decay: float) -> AveragedModel:
    """A moving average of ``model``'s parameters and buffers; call ``update_parameters(model)`` after each step.

    ``.module`` is the averaged model (same class as ``model``); ``state_dict()`` holds it and the
    update count, so a resumed run continues the same average.
    """
    if not 0.0 < decay < 1.0:
        raise ValueError(f"EMA decay must be between 0 and 1 (e.g. 0.999), got {decay}")

    @torch.no_grad()
    def update(averaged: list[torch.Tensor], current: list[torch.Tensor], num_updates: torch.Tensor) -> None:
        weight = 1.0 - ema_decay_at(decay, int(num_updates))
        floats = [(a, c) for a, c in zip(averaged, current) if a.is_floating_point()]
        if floats:
            torch._foreach_lerp_([a for a, _ in floats], [c for _, c in floats], weight)
        for a, c in zip(averaged, current):  # integer buffers (counters) are copied
            if not a.is_floating_point():
                a.copy_(c)

    return AveragedModel(model, multi_avg_fn=update, use_buffers=True)
