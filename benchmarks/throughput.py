"""Side-by-side throughput: our ViT against timm's VisionTransformer with the same configuration.

Training steps (forward + backward + AdamW step) and inference, images/s, for both models built
from one ViTConfig, on the same batch, with the same threads, measured in one process with the
repeats interleaved (ours, timm, ours, timm, ...) so machine drift hits both alike. Reports the
median of the repeats, the ratio ours / timm, and FLOPs utilisation (MFU: the FLOPs each model
runs, against the matrix-multiply rate this machine reaches, measured here, fp32 or bf16; under CLS
pooling our forward skips most of the last block's work, so it runs fewer FLOPs than timm's). Example:

    python benchmarks/throughput.py                              # the CPU table
    python benchmarks/throughput.py --device cuda --dtype bf16 --compile --batch-scale 8 --tag gpu
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
from vitlab.model import ViT, ViTConfig, count_flops  # noqa: E402
from vitlab.presets import MODEL_PRESETS  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
CASES = {
    # name: (config, batch, modes)
    "mnist-default": (MODEL_PRESETS["vit_mnist"], 128, ("train", "infer")),
    "cifar-size": (ViTConfig(img_size=32, patch_size=4, in_chans=3, num_classes=10, embed_dim=192, depth=9, num_heads=12,
                             mlp_ratio=2.0), 128, ("train", "infer")),
    "vit-ti16-224": (MODEL_PRESETS["vit_tiny_patch16_224"], 32, ("train", "infer")),
    "vit-b16-224": (MODEL_PRESETS["vit_base_patch16_224"], 16, ("infer",)),
}


def timm_model(cfg: ViTConfig) -> torch.nn.Module:
    """timm's VisionTransformer with the architecture of ``cfg``."""
    from timm.models.vision_transformer import VisionTransformer

    return VisionTransformer(
        img_size=cfg.img_size, patch_size=cfg.patch_size, in_chans=cfg.in_chans, num_classes=cfg.num_classes,
        embed_dim=cfg.embed_dim, depth=cfg.depth, num_heads=cfg.num_heads, mlp_ratio=cfg.mlp_ratio,
        qkv_bias=cfg.qkv_bias, class_token=cfg.class_token, global_pool="token" if cfg.pool == "cls" else "avg",
        pos_embed="learn" if cfg.pos_embed == "learned" else "none",
    )


def matmul_rate(device: torch.device, dtype: torch.dtype, n: int = 2048, repeats: int = 10) -> float:
    """Best FLOP/s of an n x n matrix product on this device (the denominator of MFU)."""
    a, b = torch.randn(n, n, device=device, dtype=dtype), torch.randn(n, n, device=device, dtype=dtype)
    best = float("inf")
    for _ in range(repeats + 2):
        _sync(device)
        start = time.perf_counter()
        a @ b
        _sync(device)
        best = min(best, time.perf_counter() - start)
    return 2 * n**3 / best


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def make_step(model: torch.nn.Module, mode: str, x: torch.Tensor, y: torch.Tensor, amp: torch.dtype | None):
    """A closure running one training step or one inference batch."""
    autocast = (lambda: torch.autocast(x.device.type, dtype=amp)) if amp else (lambda: torch.autocast(x.device.type,
                                                                                                        enabled=False))
    if mode == "train":
        model.train()
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)

        def step():
            with autocast():
                loss = F.cross_entropy(model(x).float(), y)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
        return step
    model.eval()

    @torch.no_grad()
    def infer():
        with autocast():
            model(x)
    return infer


def measure(steps: dict, batch: int, device: torch.device, repeats: int, iters: int, warmup: int) -> dict[str, list[float]]:
    """images/s per repeat for each named step, repeats interleaved."""
    for step in steps.values():
        for _ in range(warmup):
            step()
    rates: dict[str, list[float]] = {name: [] for name in steps}
    for _ in range(repeats):
        for name, step in steps.items():
            _sync(device)
            start = time.perf_counter()
            for _ in range(iters):
                step()
            _sync(device)
            rates[name].append(batch * iters / (time.perf_counter() - start))
    return rates


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cases", nargs="*", default=list(CASES), choices=list(CASES))
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="fp32", choices=["fp32", "bf16"], help="bf16: autocast (GPU)")
    parser.add_argument("--compile", action="store_true", help="torch.compile both models")
    parser.add_argument("--attn", default="sdpa", choices=["sdpa", "explicit"], help="our attention path")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--iters", type=int, default=5, help="steps per repeat")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--batch-scale", type=int, default=1,
                        help="multiply every case's batch (the CPU-sized batches leave a GPU idle; e.g. 8 there)")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    parser.add_argument("--tag", default=None, help="results file name (default throughput-DEVICE)")
    args = parser.parse_args()

    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    amp = torch.bfloat16 if args.dtype == "bf16" else None
    peak = matmul_rate(device, torch.bfloat16 if amp else torch.float32, n=8192 if device.type == "cuda" else 2048)
    print(f"device {device}, {torch.get_num_threads()} threads, matmul {peak / 1e9:.0f} GFLOP/s ({args.dtype})")
    rows = []
    for name in args.cases:
        cfg, batch, modes = CASES[name]
        batch *= args.batch_scale
        flops = count_flops(cfg)  # the standard count
        executed = count_flops(cfg, every_token=False)  # what our forward runs (timm's: the standard count)
        for mode in modes:
            torch.manual_seed(0)
            ours = ViT(cfg, attn_impl=args.attn).to(device)
            theirs = timm_model(cfg).to(device)
            if args.compile:
                ours, theirs = torch.compile(ours), torch.compile(theirs)
            x = torch.randn(batch, cfg.in_chans, *cfg.img_size, device=device)
            y = torch.randint(0, cfg.num_classes, (batch,), device=device)
            rates = measure({"ours": make_step(ours, mode, x, y, amp), "timm": make_step(theirs, mode, x, y, amp)},
                            batch, device, args.repeats, args.iters, args.warmup)
            ours_rate, timm_rate = statistics.median(rates["ours"]), statistics.median(rates["timm"])
            passes = 3 if mode == "train" else 1  # backward ~ 2x forward
            row = {"case": name, "mode": mode, "batch": batch, "ours_img_s": round(ours_rate, 1),
                   "timm_img_s": round(timm_rate, 1), "ratio": round(ours_rate / timm_rate, 3),
                   "ours_mfu": round(ours_rate * passes * executed / peak, 3),
                   "timm_mfu": round(timm_rate * passes * flops / peak, 3), "forward_gflops_per_image": flops / 1e9,
                   "ours_executed_gflops_per_image": executed / 1e9,
                   "repeats": {k: [round(r, 1) for r in v] for k, v in rates.items()}}
            rows.append(row)
            print(f"{name:<14} {mode:<5} batch {batch:>3}: ours {ours_rate:8.1f} img/s | timm {timm_rate:8.1f} img/s | "
                  f"ratio {row['ratio']:.3f} | MFU ours {row['ours_mfu']:.1%} timm {row['timm_mfu']:.1%}", flush=True)
            del ours, theirs
            write_results(args, device, peak, rows)  # after every row: a run cut short keeps what it measured
    return 0


def write_results(args: argparse.Namespace, device: torch.device, peak: float, rows: list[dict]) -> Path:
    """The rows measured so far and the machine, as benchmarks/results/<tag>.json."""
    import timm

    result = {"device": str(device), "gpu": torch.cuda.get_device_name(0) if device.type == "cuda" else None,
              "cpu": platform.processor() or _cpu_name(), "threads": torch.get_num_threads(), "dtype": args.dtype,
              "compile": args.compile, "attn": args.attn, "matmul_gflops": round(peak / 1e9, 1),
              "torch": torch.__version__, "timm": timm.__version__, "date": time.strftime("%Y-%m-%d"), "rows": rows}
    RESULTS.mkdir(parents=True, exist_ok=True)
    out = RESULTS / f"{args.tag or 'throughput-' + device.type}.json"
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"written to {out}", flush=True)
    return out


def _cpu_name() -> str:
    if os.path.exists("/proc/cpuinfo"):
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return "unknown"


if __name__ == "__main__":
    sys.exit(main())
