"""The pictures every training or fine-tuning run leaves in ``RUN_DIR/figures``:
curves.png, confusion.png and mistakes.png (plus mistakes.json with the numbers)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from vitlab.data.datasets import ImageSplit
from vitlab.insight.plots import plot_confusion, plot_curves, plot_mistakes, save_figure

FIGURES_DIR = "figures"


def split_images(split: ImageSplit, index: list[int]) -> torch.Tensor:
    """uint8 images (n, C, H, W) at ``index`` of an in-memory or streamed split."""
    if split.images is not None:
        return split.images[torch.as_tensor(index, dtype=torch.long)]
    return torch.stack([torch.as_tensor(split.stream[i][0]) for i in index]) if index else torch.zeros(0)


def worst_mistakes(labels: torch.Tensor, predicted: torch.Tensor, confidence: torch.Tensor, count: int = 16) -> list[int]:
    """Indices of the misclassified images the model was most sure about."""
    wrong = (predicted != labels).nonzero().flatten()
    order = confidence[wrong].argsort(descending=True)
    return wrong[order[:count]].tolist()


def write_run_figures(run_dir: str | Path, history: list[dict[str, Any]], classes: list[str], evaluation: dict,
                      val: ImageSplit, title: str = "", mistakes: int = 16) -> dict[str, Path]:
    """Curves from ``history``; confusion matrix and worst mistakes from the final ``evaluation``
    (what :func:`vitlab.training.trainer.evaluate` returns) of the validation split ``val``."""
    out = Path(run_dir) / FIGURES_DIR
    written = {"curves": save_figure(plot_curves(history, title), out / "curves.png")}
    written["confusion"] = save_figure(plot_confusion(evaluation["confusion"], classes), out / "confusion.png")
    index = worst_mistakes(val.labels, evaluation["predicted"], evaluation["confidence"], mistakes)
    true = val.labels[index].tolist() if index else []
    guess = evaluation["predicted"][index].tolist() if index else []
    sure = evaluation["confidence"][index].tolist() if index else []
    written["mistakes"] = save_figure(plot_mistakes(split_images(val, index), true, guess, sure, classes),
                                      out / "mistakes.png")
    (out / "mistakes.json").write_text(json.dumps(
        [{"index": i, "true": classes[t], "predicted": classes[p], "probability": round(c, 6)}
         for i, t, p, c in zip(index, true, guess, sure)], indent=1) + "\n")
    return written
