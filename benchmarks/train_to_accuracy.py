"""Time-to-accuracy benchmark: run `vitlab train` with a preset and record the result.

Measures wall-clock time of the whole command (start-up and data loading included) and
writes `benchmarks/results/<preset>-<machine>.json` plus a line in `benchmarks/results/README.md`'s
table format to stdout. Example:

    python benchmarks/train_to_accuracy.py --preset mnist --target 0.985 --budget-s 300
    python benchmarks/train_to_accuracy.py --preset mnist_long --target 0.995 --run-dir runs/long   # killed? then
    python benchmarks/train_to_accuracy.py --preset mnist_long --target 0.995 --run-dir runs/long --resume
    python benchmarks/train_to_accuracy.py --preset none --target 0.5 --tag newcomer-scenes -- \
        --data.dataset imagefolder --data.path $VITLAB_DATA_DIR/scenes          # what a newcomer types, nothing more
    python benchmarks/train_to_accuracy.py --command finetune --tag imagenette-ti16 --target 0.97 --budget-s 600 \
        -- --pretrained vit_tiny --dataset imagefolder --data.path $VITLAB_DATA_DIR/imagenette-mini --mode linear
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"


def machine() -> dict:
    """The CPU, torch and the measured fp32 and bf16 matrix-product rates (bf16 is emulated, and slow, without
    AMX-BF16 or AVX512-BF16)."""
    import torch

    from throughput import _cpu_name, matmul_rate  # benchmarks/ is on the path when this runs as a script

    return {"cpu": _cpu_name(), "cores": os.cpu_count(), "torch": torch.__version__, "python": platform.python_version(),
            "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
            "matmul_fp32_gflops": round(matmul_rate(torch.device("cpu"), torch.float32) / 1e9, 1),
            "matmul_bf16_gflops": round(matmul_rate(torch.device("cpu"), torch.bfloat16) / 1e9, 1)}


def evaluate_with_tta(run_dir: Path, tta: str, target: float) -> dict:
    """`vitlab eval RUN_DIR --tta MODE` on the run's final (``last``) checkpoint: accuracy and time."""
    out = run_dir / f"eval-tta-{tta}"
    start = time.perf_counter()
    subprocess.run([sys.executable, "-m", "vitlab.cli", "eval", str(run_dir / "last.safetensors"), "--tta", tta,
                    "--out", str(out)], check=True)
    metrics = json.loads((out / "metrics.json").read_text())
    return {"mode": tta, "test_acc": metrics["accuracy"], "test_loss": metrics["loss"],
            "eval_s": round(time.perf_counter() - start, 1), "target_reached": metrics["accuracy"] >= target}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--command", default="train", choices=["train", "finetune"])
    parser.add_argument("--preset", default="mnist", help="train: the run preset (none: no --preset, as a newcomer types it)")
    parser.add_argument("--target", type=float, required=True, help="accuracy goal, e.g. 0.985")
    parser.add_argument("--budget-s", type=float, default=None, help="time goal in seconds")
    parser.add_argument("--tag", default=None, help="name of the results file (default: preset)")
    parser.add_argument("--run-dir", type=Path, default=None,
                        help="where the run goes (default: a fresh temporary folder); must not exist yet")
    parser.add_argument("--resume", action="store_true",
                        help="continue the interrupted run in --run-dir; its wall time is then the training time of "
                             "all finished epochs plus this start-up (the epoch cut short by the kill is not counted)")
    from vitlab.evaluate import TTA_MODES

    parser.add_argument("--tta", default="none", choices=TTA_MODES,
                        help="also evaluate the final checkpoint with this test-time augmentation (`vitlab eval --tta`) "
                             "and record it beside the single-view accuracy, which alone decides `met`")
    parser.add_argument("extra", nargs="*", help="more `vitlab train` flags")
    args = parser.parse_args()

    name = args.tag or args.preset
    run_dir = args.run_dir or Path(tempfile.mkdtemp(prefix=f"vitlab-bench-{name}-")) / "run"
    if args.resume and args.run_dir is None:
        parser.error("--resume needs the --run-dir of the interrupted run")
    preset = ["--preset", args.preset] if args.command == "train" and args.preset != "none" else []
    command = ["vitlab", args.command, *preset, "--run_dir", str(run_dir), *args.extra]
    metrics = run_dir / "metrics.jsonl"
    done_s = 0.0
    if args.resume:
        finished = [json.loads(line) for line in metrics.read_text().splitlines()] if metrics.exists() else []
        done_s = finished[-1]["elapsed_s"] if finished else 0.0
        run = ["vitlab", args.command, "--resume", str(run_dir)]
    else:
        run = command
    print("$", shlex.join(run), flush=True)
    start = time.perf_counter()
    subprocess.run([sys.executable, "-m", "vitlab.cli", *run[1:]], check=True)
    wall = time.perf_counter() - start
    history = [json.loads(line) for line in metrics.read_text().splitlines()]
    final = history[-1]
    if args.resume:  # the finished epochs of earlier sessions, plus this session's start-up and epochs
        wall += done_s
    validated = [h for h in history if "val_acc" in h]  # every epoch unless --train.eval_every says otherwise
    reached = next((h for h in validated if h["val_acc"] >= args.target), None)
    result = {
        "preset": args.preset if args.command == "train" and args.preset != "none" else None,
        "command": shlex.join(command),
        "final_test_acc": final["val_acc"],
        "best_test_acc": max(h["val_acc"] for h in validated),
        "epochs": final["epoch"],
        "wall_s": round(wall, 1),
        "train_loop_s": round(final["elapsed_s"], 1),
        "target_acc": args.target,
        "budget_s": args.budget_s,
        "target_first_reached": None if reached is None else {"epoch": reached["epoch"],
                                                               "elapsed_s": round(reached["elapsed_s"], 1)},
        "met": final["val_acc"] >= args.target and (args.budget_s is None or wall <= args.budget_s),
        "history": history,
        "machine": machine(),
        "date": time.strftime("%Y-%m-%d"),
    }
    if args.resume:
        result["resumed_after_s"] = round(done_s, 1)
    if args.tta != "none":
        result["tta"] = evaluate_with_tta(run_dir, args.tta, args.target)
    RESULTS.mkdir(parents=True, exist_ok=True)
    out = RESULTS / f"{name}.json"
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"| {name} | {final['val_acc'] * 100:.2f}% | {wall:.0f} s | {final['epoch']} | "
          f"{'met' if result['met'] else 'NOT met'} (goal {args.target * 100:g}%"
          f"{f' in {args.budget_s:.0f} s' if args.budget_s else ''}) | `{shlex.join(command)}` |")
    if args.tta != "none":
        print(f"with test-time augmentation {args.tta}: {result['tta']['test_acc'] * 100:.2f}%")
    print(f"written to {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
