"""Evaluate a checkpoint: accuracy, per-class accuracy and the confusion matrix."""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass, replace
from pathlib import Path

import torch

from vitlab.config import RunConfig
from vitlab.data import ImageData, load_data
from vitlab.data.augment import FLIP_AUGMENTATIONS
from vitlab.device import resolve_device
from vitlab.predict import model_preprocess
from vitlab.training.checkpoint import load_checkpoint
from vitlab.training.trainer import evaluate

TTA_MODES = ("none", "flip")


@dataclass
class EvalReport:
    checkpoint: str
    split: str
    classes: list[str]
    loss: float
    acc: float
    confusion: torch.Tensor  # (true, predicted)
    tta: str = "none"

    @property
    def per_class_acc(self) -> list[float]:
        totals = self.confusion.sum(1).clamp(min=1)
        return (self.confusion.diag() / totals).tolist()

    def as_text(self) -> str:
        n = int(self.confusion.sum())
        tta = f", test-time augmentation: {self.tta}" if self.tta != "none" else ""
        lines = [f"{self.checkpoint} on {self.split} ({n} images{tta}): accuracy {self.acc:.4f}, loss {self.loss:.4f}",
                 "", f"{'class':<24}{'images':>8}{'accuracy':>10}"]
        for name, total, acc in zip(self.classes, self.confusion.sum(1).tolist(), self.per_class_acc):
            lines.append(f"{name[:23]:<24}{total:>8}{acc:>10.4f}")
        if len(self.classes) <= 20:
            width = max(5, len(str(int(self.confusion.max()))) + 1)
            lines += ["", "confusion matrix (rows: true class, columns: predicted class, in class order):"]
            lines += ["".join(f"{v:>{width}}" for v in row) for row in self.confusion.tolist()]
        return "\n".join(lines)


def training_data(info: dict, source: str | Path, image_size, data_dir: str | None = None, data_path: str | None = None,
                  whole_splits: bool = True) -> ImageData:
    """The data a checkpoint was trained on, from the run config in its metadata ``info``
    (``whole_splits``: ignore the run's train/val subsets)."""
    if "run_config" not in info:
        raise ValueError(f"{source} does not say which data it was trained on (no run_config in its metadata)")
    cfg = RunConfig.from_dict(info["run_config"])
    where = {"data_dir": data_dir or cfg.data.data_dir, "path": data_path or cfg.data.path}
    subsets = {"train_subset": None, "val_subset": None} if whole_splits else {}
    cfg = replace(cfg, data=replace(cfg.data, **where, **subsets))
    return load_data(cfg.data, image_size=image_size, seed=cfg.train.seed)


def checkpoint_with_data(checkpoint: str | Path, data_dir: str | None = None, data_path: str | None = None,
                         device: torch.device | str = "cpu", whole_splits: bool = True):
    """A checkpoint's model and metadata, the data it was trained on (its run config names it),
    and the preprocessing that matches: ``(model, info, data, preprocess)``."""
    model, info = load_checkpoint(checkpoint, device=device)
    data = training_data(info, checkpoint, model.cfg.img_size, data_dir, data_path, whole_splits)
    return model, info, data, model_preprocess(model, info)


def evaluate_checkpoint(checkpoint: str | Path, split: str = "val", data_dir: str | None = None,
                        data_path: str | None = None, batch_size: int = 512, device: str = "auto",
                        tta: str = "none") -> EvalReport:
    """Evaluate on the data set the checkpoint was trained on (the whole split).

    ``tta="flip"`` averages the predictions for each image and its mirror image; it is refused for a
    checkpoint whose training never flipped images (digits, say), where the mirror image is out of distribution.
    """
    if tta not in TTA_MODES:
        raise ValueError(f"unknown test-time augmentation {tta!r}; choose one of {TTA_MODES}")
    dev = resolve_device(device)
    model, info, data, preprocess = checkpoint_with_data(checkpoint, data_dir, data_path, dev)
    if tta == "flip":
        augment = info["run_config"].get("data", {}).get("augment")
        if augment not in FLIP_AUGMENTATIONS:
            raise ValueError(f"--tta flip needs a model trained with horizontal flips, but {checkpoint} was trained with "
                             f"augment={augment!r} (flips with: {', '.join(FLIP_AUGMENTATIONS)}); evaluate it with --tta none")
    result = evaluate(model, getattr(data, split), preprocess, batch_size, dev, num_classes=len(info["classes"]),
                      progress=True, flip_tta=tta == "flip")
    return EvalReport(str(checkpoint), split, list(info["classes"]), result["loss"], result["acc"], result["confusion"],
                      tta)


def write_eval_report(report: EvalReport, out: Path) -> None:
    """metrics.json, per_class.csv and confusion.csv (with class names) in ``out``."""
    out.mkdir(parents=True, exist_ok=True)
    (out / "metrics.json").write_text(json.dumps(
        {"checkpoint": report.checkpoint, "split": report.split, "accuracy": report.acc, "loss": report.loss,
         "images": int(report.confusion.sum()), "tta": report.tta}, indent=2) + "\n")
    with open(out / "per_class.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["class", "images", "accuracy"])
        for name, total, acc in zip(report.classes, report.confusion.sum(1).tolist(), report.per_class_acc):
            writer.writerow([name, total, f"{acc:.6f}"])
    with open(out / "confusion.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["true \\ predicted", *report.classes])
        for name, row in zip(report.classes, report.confusion.tolist()):
            writer.writerow([name, *row])
