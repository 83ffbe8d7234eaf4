"""Training-step throughput of a run preset's model, in several ways of running the same step, side by side.

The bare step (forward + cross-entropy + backward + AdamW step, no data loading, no validation) on one random
batch, images/s, median of the repeats, the variants interleaved (a, b, c, a, b, c, ...) so machine drift hits
them alike. Variants: ``eager``; ``compile`` (``torch.compile``); ``cl`` (channels-last memory format for the
conv stem); ``bf16`` (bf16 autocast); combined with ``+``, e.g. ``cl+compile``. Picks what a time-limited
recipe should run with. Example:

    python benchmarks/train_step.py --preset fashion_mnist_30min --variants eager compile cl cl+compile bf16
    python benchmarks/train_step.py --preset cifar10_60min --model attn_impl=explicit --variants compile bf16+compile
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from throughput import RESULTS  # noqa: E402
from train_to_accuracy import machine  # noqa: E402
from vitlab.model import ViT  # noqa: E402
from vitlab.resolve import ConfigError, field_overrides, resolve_model  # noqa: E402

OPTIONS = ("compile", "cl", "bf16")


def make_step(preset: str, variant: str, batch: int, overrides: dict | None = None) -> Callable[[], None]:
    """One training step of the preset's model, run the way ``variant`` says, on a fixed random batch."""
    options = set(variant.split("+")) - {"eager"}
    if unknown := options - set(OPTIONS):
        raise SystemExit(f"unknown variant option(s) {sorted(unknown)} in {variant!r}; combine eager or {OPTIONS} with +")
    cfg = resolve_model(preset, **(overrides or {}))
    torch.manual_seed(0)
    model = ViT(cfg)
    x = torch.randn(batch, cfg.in_chans, *cfg.img_size)  # (B, C, H, W)
    if "cl" in options:
        model, x = model.to(memory_format=torch.channels_last), x.contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, cfg.num_classes, (batch,))
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    runner = torch.compile(model) if "compile" in options else model

    def step() -> None:
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled="bf16" in options):
            loss = F.cross_entropy(runner(x), y)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    return step


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="fashion_mnist_30min", help="run preset whose model is timed")
    parser.add_argument("--model", nargs="+", default=[], metavar="FIELD=VALUE",
                        help="change the preset's model, e.g. --model depth=2 embed_dim=256")
    parser.add_argument("--variants", nargs="+", default=["eager", "compile", "cl", "cl+compile"])
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    parser.add_argument("--steps", type=int, default=15, help="steps per repeat")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--tag", default=None, help="results file name (default train-step-PRESET, never overwritten)")
    args = parser.parse_args()
    try:
        overrides = field_overrides(args.model)
        resolve_model(args.preset, **overrides)  # a wrong field or value stops here, before any timing
    except ConfigError as err:
        raise SystemExit(f"--model: {err}") from None
    out = RESULTS / f"{args.tag or 'train-step-' + args.preset}.json"
    if out.exists() and not args.tag:
        raise SystemExit(f"{out} holds an earlier run; name this one with --tag (it is not overwritten)")
    if args.threads:
        torch.set_num_threads(args.threads)
    torch._dynamo.config.recompile_limit = 64  # every compiled variant keeps its graphs (past the limit: eager)
    steps = {variant: make_step(args.preset, variant, args.batch, overrides) for variant in args.variants}
    for step in steps.values():  # warm-up: compiling, first-touch allocations
        for _ in range(5):
            step()
    rates: dict[str, list[float]] = {variant: [] for variant in steps}
    for _ in range(args.repeats):
        for variant, step in steps.items():
            start = time.perf_counter()
            for _ in range(args.steps):
                step()
            rates[variant].append(args.batch * args.steps / (time.perf_counter() - start))
    rows = [{"variant": v, "images_per_s": round(statistics.median(r), 1), "repeats": [round(x, 1) for x in r]}
            for v, r in rates.items()]
    for row in rows:
        print(f"{row['variant']:16s} {row['images_per_s']:8.1f} images/s")
    result = {"preset": args.preset, "model_overrides": overrides, "batch": args.batch,
              "threads": torch.get_num_threads(), "rows": rows,
              "machine": machine(),
              "date": time.strftime("%Y-%m-%d")}
    RESULTS.mkdir(exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"written to {out}")


if __name__ == "__main__":
    main()
