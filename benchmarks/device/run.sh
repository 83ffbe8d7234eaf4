#!/usr/bin/env bash
# Run ON THE GPU MACHINE through the device tool (see README.md beside this file).
#   run.sh stage N   keep CIFAR-10 part N (carried as .device/cifar10/part-N) in /tmp until the last call
#   run.sh bench     unpack the parts, then: a CIFAR-10 time-budgeted run and the throughput table against timm
#                    (fp32; bf16 + compile); results and logs go to $OUT (~9 of the call's 10 minutes)
set -uo pipefail
cd "$(dirname "$0")/../.."
parts=/tmp/vitlab-parts
case "${1:-}" in
stage)
    mkdir -p "$parts" && cp ".device/cifar10/part-$2" "$parts/" && ls -l "$parts" && nvidia-smi -L
    ;;
bench)
    out="${OUT:-/tmp/vitlab-out}"; mkdir -p "$out"
    export PYTHONPATH="$PWD/src:/tmp/site" PYTHONUNBUFFERED=1 VITLAB_DATA_DIR=/tmp/vitlab-data VITLAB_CACHE_DIR=/tmp/vitlab-cache
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .device/wheels/*.whl
    if [ ! -d "$VITLAB_DATA_DIR/cifar10/train" ]; then
        mkdir -p "$VITLAB_DATA_DIR" && cat "$parts"/part-* | tar -xzf - -C "$VITLAB_DATA_DIR" || echo "CIFAR-10 parts missing or cut" >&2
    fi
    python3 -c "import torch, timm; print('torch', torch.__version__, 'timm', timm.__version__, torch.cuda.get_device_name(0))"
    # 1. CIFAR-10 from scratch within a wall-time budget (the issue's goal: >= 94% in <= 10 min on one GPU)
    timeout "${CIFAR_S:-360}" python3 benchmarks/train_to_accuracy.py --preset cifar10_gpu --target 0.94 --budget-s 600 --tag cifar10_gpu \
        --run-dir /tmp/vitlab-runs/cifar10_gpu -- --train.time_budget_s "${CIFAR_BUDGET_S:-240}" 2>&1 \
        | tr '\r' '\n' | grep -av '^epoch .*it/s' | tee "$out/cifar10_gpu.log"
    # 2. throughput against timm, same config, same batch: plain fp32, then bf16 autocast + torch.compile
    #    (each row is written as soon as it is measured, so a timeout keeps the rows before it)
    timeout "${FP32_S:-90}" python3 benchmarks/throughput.py --device cuda --batch-scale 8 --tag throughput-gpu-fp32 \
        2>&1 | tee "$out/throughput-fp32.log"
    timeout "${BF16_S:-150}" python3 benchmarks/throughput.py --device cuda --dtype bf16 --compile --batch-scale 8 \
        --tag throughput-gpu-bf16-compile 2>&1 | tee "$out/throughput-bf16-compile.log"
    cp benchmarks/results/throughput-gpu-*.json benchmarks/results/cifar10_gpu.json "$out/" 2>/dev/null
    cp /tmp/vitlab-runs/cifar10_gpu/metrics.jsonl "$out/cifar10_gpu-metrics.jsonl" 2>/dev/null  # kept if it was cut
    ls -l "$out"
    ;;
*)
    echo "usage: run.sh stage N | run.sh bench" >&2; exit 2
    ;;
esac
