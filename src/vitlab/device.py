"""Where the arithmetic runs: the device a name means, and the precision a run uses there."""

from __future__ import annotations

import contextlib
import os
import shutil
from functools import cache
from pathlib import Path

import torch

CPUINFO = Path("/proc/cpuinfo")


def resolve_device(name: str) -> torch.device:
    """``auto``: CUDA when there is one, else the CPU; any other name as torch reads it."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


@cache
def cpu_has_amx_bf16() -> bool:
    """Whether the CPU has Intel AMX with bf16 tiles (``amx_bf16`` among /proc/cpuinfo's flags)."""
    try:
        return any(line.startswith("flags") and " amx_bf16" in line for line in CPUINFO.read_text().splitlines())
    except OSError:
        return False


def resolve_precision(precision: str, device: torch.device, compiled: bool = False) -> str:
    """The precision ``auto`` means for a training or validation step on ``device``: bf16 autocast on CUDA; on the
    CPU, bf16 only for a step run through ``torch.compile`` on a CPU with AMX-BF16, fp32 otherwise. Measured with
    ``benchmarks/train_step.py`` and ``benchmarks/throughput.py`` on AMX-BF16 Xeons (docs/results.md): a bf16 matrix
    product runs 6-7x faster; an eager bf16 autocast training step of a ViT ran at 0.25-0.55x of fp32 (the casts and
    LayerNorm/softmax/GELU outside AMX dominate), a compiled one at 0.96-2.0x (2.0x where the FLOPs are in a conv stem).
    Explicit ``fp32`` and ``bf16`` are taken as given."""
    if precision != "auto":
        return precision
    if device.type == "cuda":
        return "bf16"
    return "bf16" if device.type == "cpu" and compiled and cpu_has_amx_bf16() else "fp32"


def autocast_context(device: torch.device, precision: str):
    """bf16 autocast when :func:`resolve_precision` says bf16; else nothing (fp32)."""
    if resolve_precision(precision, device) == "bf16":
        return torch.autocast(device_type=device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def precision_note(precision: str, device: torch.device) -> str | None:
    """A warning for bf16 on a CPU without AMX, where torch emulates it (slow); None otherwise."""
    if precision == "bf16" and device.type == "cpu" and not cpu_has_amx_bf16():
        return ("--train.precision bf16 on a CPU without AMX-BF16: bf16 is emulated there and runs several times "
                "slower than fp32; --train.precision auto (fp32 on such a CPU) is faster")
    return None


def cpp_compiler() -> str | None:
    """The C++ compiler ``torch.compile`` would build CPU kernels with: ``$CXX`` when set, else g++, c++ or
    clang++ on the PATH; None when there is none."""
    names = [os.environ["CXX"]] if os.environ.get("CXX") else ["g++", "c++", "clang++"]
    return next((path for name in names if (path := shutil.which(name))), None)


def resolve_compile(compile_: bool, device: torch.device) -> tuple[bool, str | None]:
    """Whether the training step runs through ``torch.compile``, and a note when ``--train.compile true`` cannot
    be honoured: on the CPU, compiling needs a C++ compiler, and without one the run trains uncompiled."""
    if compile_ and device.type == "cpu" and cpp_compiler() is None:
        return False, ("--train.compile true needs a C++ compiler on the CPU and none was found (g++, c++, clang++ "
                       "or $CXX): training uncompiled, which is slower; install one (e.g. apt install g++) to compile")
    return compile_, None
