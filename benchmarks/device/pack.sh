#!/usr/bin/env bash
# Run HERE (no GPU needed): packs what a lent GPU machine lacks into .device/ (git-ignored).
#   .device/wheels/        the project's pure-Python dependencies that the GPU image does not hold (cp312 wheels)
#   .device/cifar10/part-N CIFAR-10's PNG folder as a .tar.gz cut into parts that fit one call's 64-MiB transfer
# Then follow benchmarks/device/README.md: one `run` per part, the benchmarks in the last.
set -euo pipefail
cd "$(dirname "$0")/../.."
: "${VITLAB_DATA_DIR:?set VITLAB_DATA_DIR to the folder that holds cifar10/{train,test}}"
[ -d "$VITLAB_DATA_DIR/cifar10/train" ] || { echo "no $VITLAB_DATA_DIR/cifar10/train: point VITLAB_DATA_DIR at the data" >&2; exit 1; }
rm -rf .device && mkdir -p .device/wheels .device/cifar10
# The GPU image has torch, torchvision, timm, safetensors, tqdm, matplotlib, huggingface_hub, pyyaml (see the device
# tool's KINDS.md); the CLI's config library and its helpers are missing. Pure-Python wheels: any platform fits.
python3 -m pip download --quiet --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    -d .device/wheels jsonargparse==4.53.0 docstring-parser==0.18.0 typeshed-client==2.15.0
tar -C "$VITLAB_DATA_DIR" -czf - cifar10 | split -b 56m -d -a 1 - .device/cifar10/part-
ls -l .device/wheels .device/cifar10
