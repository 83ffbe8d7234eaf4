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


BF16_CPU_FLAGS = ("amx_bf16", "avx512_bf16")  # Intel AMX tiles; AVX-512 bf16 dot products (AMD Zen 4, Intel)


@cache
def cpu_has_native_bf16() -> bool:
    """Whether the CPU multiplies bf16 in hardware: AMX-BF16 or AVX512-BF16 among /proc/cpuinfo's flags
    (without either, torch emulates bf16 in fp32 arithmetic)."""
    try:
        flags = {flag for line in CPUINFO.read_text().splitlines() if line.startswith("flags")
                 for flag in line.partition(":")[2].split()}
    except OSError:
        return False
    return any(flag in flags for flag in BF16_CPU_FLAGS)


def resolve_precision(precision: str, device: torch.device, compiled: bool = False) -> str:
    """The precision ``auto`` means for a training or validation step on ``device``: bf16 autocast on CUDA; on the
    CPU, bf16 only for a step run through ``torch.compile`` on a CPU with native bf16 (AMX-BF16 or AVX512-BF16), fp32
    otherwise. Measured with ``benchmarks/train_step.py`` and ``benchmarks/throughput.py`` (docs/results.md): on
    AMX-BF16 Xeons a bf16 matrix product runs 6-7x faster, an eager bf16 autocast training step of a ViT 0.25-0.55x of
    fp32 (the casts and LayerNorm/softmax/GELU outside AMX dominate), a compiled one 0.96-2.0x (2.0x where the FLOPs
    are in a conv stem); on an AVX512-BF16 AMD EPYC the product 2.2x, the same compiled steps 1.06-1.8x.
    Explicit ``fp32`` and ``bf16`` are taken as given."""
    if precision != "auto":
        return precision
    if device.type == "cuda":
        return "bf16"
    return "bf16" if device.type == "cpu" and compiled and cpu_has_native_bf16() else "fp32"


def autocast_context(device: torch.device, precision: str):
    """bf16 autocast when :func:`resolve_precision` says bf16; else nothing (fp32)."""
    if resolve_precision(precision, device) == "bf16":
        return torch.autocast(device_type=device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def precision_note(precision: str, device: torch.device) -> str | None:
    """A warning for bf16 on a CPU without native bf16, where torch emulates it (slow); None otherwise."""
    if precision == "bf16" and device.type == "cpu" and not cpu_has_native_bf16():
        return ("--train.precision bf16 on a CPU without AMX-BF16 or AVX512-BF16: bf16 is emulated there and runs "
                "several times slower than fp32; --train.precision auto (fp32 on such a CPU) is faster")
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
