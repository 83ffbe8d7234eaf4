"""Where the arithmetic runs: the device a name means, and the precision a run uses there."""

from __future__ import annotations

import contextlib

import torch


def resolve_device(name: str) -> torch.device:
    """``auto``: CUDA when there is one, else the CPU; any other name as torch reads it."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def autocast_context(device: torch.device, precision: str):
    """bf16 autocast for ``precision`` bf16, or auto on CUDA; else nothing (fp32)."""
    use_bf16 = precision == "bf16" or (precision == "auto" and device.type == "cuda")
    if use_bf16:
        return torch.autocast(device_type=device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()
