"""Write a Hugging Face ``datasets`` copy of MNIST from the local IDX files, without internet.

Reads ``<data root>/MNIST/raw`` with torchvision's MNIST reader (through vitlab's loader, which
extracts ``.gz`` files into the cache, never into the data root), builds a DatasetDict laid out
like the Hub's ``ylecun/mnist`` (splits train and test, an ``image`` Image column and a ``label``
ClassLabel column with names "0".."9"), checks it, and writes it with ``save_to_disk``:

    python benchmarks/hf_mnist_copy.py --out /work/hfmnist [--parquet /work/hfmnist-parquet]
    vitlab train --preset mnist --data.dataset hf:/work/hfmnist

The images are the same bytes as torchvision's, in the same order, so a run from the copy
trains exactly like one from the IDX files; only the loading differs.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import time
from pathlib import Path

import torch

from vitlab.config import DataConfig
from vitlab.data import load_data


def build(data_dir: str | None):
    """A DatasetDict (train, test) with Image and ClassLabel features, and the tensors it came from."""
    import datasets

    source = load_data(DataConfig(dataset="mnist", data_dir=data_dir, download=False))
    features = datasets.Features({"image": datasets.Image(), "label": datasets.ClassLabel(names=[str(i) for i in range(10)])})
    splits = {}
    for name, split in (("train", source.train), ("test", source.val)):
        pixels = split.images[:, 0].numpy()  # (N, 28, 28) uint8: encoded as grayscale PNG
        splits[name] = datasets.Dataset.from_dict({"image": list(pixels), "label": split.labels.tolist()}, features=features)
    return datasets.DatasetDict(splits), source


def check(out: Path, source) -> None:
    """Read the copy back through vitlab's hf: source: same pixels, labels and normalisation as the IDX files."""
    copy = load_data(DataConfig(dataset=f"hf:{out}", num_workers=0, cache_dir=str(out.parent / f".{out.name}-check")),
                     image_size=(28, 28))
    shutil.rmtree(out.parent / f".{out.name}-check")
    for name in ("train", "val"):
        a, b = getattr(source, name), getattr(copy, name)
        if not (torch.equal(a.images[:], b.images[:]) and torch.equal(a.labels, b.labels)):
            raise SystemExit(f"the copy's {name} split differs from the IDX files")
    if (copy.mean, copy.std) != (source.mean, source.std):
        raise SystemExit(f"normalisation differs: {copy.mean, copy.std} vs {source.mean, source.std}")
    print(f"checked: {len(copy.train)} train / {len(copy.val)} test images and labels identical to the IDX files, "
          f"mean {copy.mean} std {copy.std}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, required=True, help="folder to write (save_to_disk); must not exist")
    parser.add_argument("--data-dir", default=None, help="root holding MNIST/raw (default $VITLAB_DATA_DIR)")
    parser.add_argument("--parquet", type=Path, default=None, help="also write train/test parquet files here (hf:parquet)")
    args = parser.parse_args()
    if args.out.exists():
        raise SystemExit(f"{args.out} exists; remove it or choose another --out")
    start = time.perf_counter()
    dataset, source = build(args.data_dir)
    tmp = args.out.with_name(f".{args.out.name}.tmp{os.getpid()}")
    try:
        dataset.save_to_disk(str(tmp))
        os.replace(tmp, args.out)  # a killed run leaves no half-written copy under --out
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    if args.parquet is not None:
        args.parquet.mkdir(parents=True, exist_ok=True)
        for name, split in dataset.items():
            split.to_parquet(str(args.parquet / f"{name}-00000-of-00001.parquet"))
    print(f"wrote {args.out} ({', '.join(f'{k}: {len(v)}' for k, v in dataset.items())}) in {time.perf_counter() - start:.0f} s")
    check(args.out, source)
    return 0


if __name__ == "__main__":
    sys.exit(main())
