"""Pictures of a training run and of attention: curves, confusion matrix, worst mistakes, overlays.

Figures are built with matplotlib's object API (no pyplot state, no display needed) and
written atomically, so a killed process never leaves half a PNG behind.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from vitlab.atomic import atomic_write
from vitlab.insight.attention import overlay


def save_figure(fig: Figure, path: str | Path, dpi: int = 110) -> Path:
    """Write ``fig`` as PNG through a temporary file in the same folder."""
    return atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=dpi, format="png"))


def _image_for_display(image: torch.Tensor):
    """uint8 (C, H, W) -> array matplotlib shows as is (gray or RGB)."""
    return image[0].numpy() if image.shape[0] == 1 else image[:3].permute(1, 2, 0).numpy()


def plot_curves(history: list[dict[str, Any]], title: str = "") -> Figure:
    """Loss, accuracy and learning rate per epoch (validation: the validated epochs, see ``--train.eval_every``)."""
    epochs = [h["epoch"] for h in history]
    validated = [h for h in history if "val_acc" in h]
    fig = Figure(figsize=(11, 3.3), layout="constrained")
    loss_ax, acc_ax, lr_ax = fig.subplots(1, 3)
    loss_ax.plot(epochs, [h["train_loss"] for h in history], "o-", ms=3, label="train")
    loss_ax.plot([h["epoch"] for h in validated], [h["val_loss"] for h in validated], "o-", ms=3, label="validation")
    loss_ax.set_title("loss")
    acc_ax.plot(epochs, [100 * h["train_acc"] for h in history], "o-", ms=3, label="train")
    acc_ax.plot([h["epoch"] for h in validated], [100 * h["val_acc"] for h in validated], "o-", ms=3, label="validation")
    best = max(validated, key=lambda h: h["val_acc"])
    acc_ax.annotate(f"best {100 * best['val_acc']:.2f}%", (best["epoch"], 100 * best["val_acc"]),
                    textcoords="offset points", xytext=(-10, -16), fontsize=8)
    acc_ax.set_title("accuracy (%)")
    lr_ax.plot(epochs, [h["lr"] for h in history], "o-", ms=3, color="tab:green")
    lr_ax.set_title("learning rate (end of epoch)")
    for ax in (loss_ax, acc_ax, lr_ax):
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
    loss_ax.legend()
    acc_ax.legend()
    if title:
        fig.suptitle(title)
    return fig


def plot_confusion(confusion: torch.Tensor, classes: list[str], title: str = "Confusion matrix") -> Figure:
    """Rows: true class, columns: predicted; colour by the fraction of the true class, counts written."""
    n = len(classes)
    size = min(12.0, max(4.5, 0.45 * n + 2))
    fig = Figure(figsize=(size, size * 0.9), layout="constrained")
    ax = fig.add_subplot()
    rates = confusion.float() / confusion.sum(1, keepdim=True).clamp(min=1)
    image = ax.imshow(rates.numpy(), cmap="Blues", vmin=0, vmax=1)
    if n <= 30:
        labels = [c[:18] for c in classes]
        ax.set_xticks(range(n), labels, rotation=60, ha="right", fontsize=7)
        ax.set_yticks(range(n), labels, fontsize=7)
        for i in range(n):
            for j in range(n):
                count = int(confusion[i, j])
                if count:
                    ax.text(j, i, str(count), ha="center", va="center", fontsize=6,
                            color="white" if rates[i, j] > 0.5 else "black")
    ax.set_xlabel("predicted class")
    ax.set_ylabel("true class")
    accuracy = confusion.diag().sum().item() / max(1, confusion.sum().item())
    ax.set_title(f"{title} (accuracy {100 * accuracy:.2f}%)")
    fig.colorbar(image, ax=ax, shrink=0.7, label="fraction of the true class")
    return fig


def plot_mistakes(images: torch.Tensor, true: list[int], predicted: list[int], confidence: list[float],
                  classes: list[str], title: str = "Most confident mistakes") -> Figure:
    """A grid of misclassified images titled ``true -> predicted (probability)``."""
    n = len(images)
    cols = min(4, max(1, n))
    rows = max(1, -(-n // cols))
    fig = Figure(figsize=(1.7 * cols, 1.85 * rows + 0.4), layout="constrained")
    axes = fig.subplots(rows, cols, squeeze=False)
    for k, ax in enumerate(axes.flat):
        ax.axis("off")
        if k < n:
            ax.imshow(_image_for_display(images[k]), cmap="gray" if images[k].shape[0] == 1 else None)
            ax.set_title(f"{classes[true[k]][:12]} → {classes[predicted[k]][:12]}\n{confidence[k]:.0%}", fontsize=7)
    fig.suptitle(title if n else f"{title}: none", fontsize=10)
    return fig


def plot_attention_grid(image: torch.Tensor, rollout: torch.Tensor, heads: torch.Tensor, title: str) -> Figure:
    """Input, rollout overlay and the last layer's per-head maps of one image."""
    panels = [("input", None), ("attention rollout", rollout)] + [(f"head {h + 1}", m) for h, m in enumerate(heads)]
    cols = min(6, len(panels))
    rows = -(-len(panels) // cols)
    fig = Figure(figsize=(2.1 * cols, 2.25 * rows + 0.5), layout="constrained")
    axes = fig.subplots(rows, cols, squeeze=False)
    for ax, (name, heat) in zip(axes.flat, panels + [("", None)] * (rows * cols - len(panels))):
        ax.axis("off")
        if not name:
            continue
        if heat is None:
            ax.imshow(_image_for_display(image), cmap="gray" if image.shape[0] == 1 else None)
        else:
            ax.imshow(overlay(image, heat).numpy())
        ax.set_title(name if name != "head 1" else "last layer: head 1", fontsize=8)
    fig.suptitle(title, fontsize=9)
    return fig


def plot_head_maps(image: torch.Tensor, heads: torch.Tensor, layer: int) -> Figure:
    """Each head's map (heads, gh, gw) of one layer laid over the uint8 image (C, H, W)."""
    cols = min(6, len(heads))
    rows = -(-len(heads) // cols)
    fig = Figure(figsize=(2.0 * cols, 2.1 * rows + 0.3), layout="constrained")
    axes = fig.subplots(rows, cols, squeeze=False)
    for index, ax in enumerate(axes.flat):
        ax.axis("off")
        if index < len(heads):
            ax.imshow(overlay(image, heads[index]).numpy())
            ax.set_title(f"layer {layer + 1}, head {index + 1}", fontsize=8)
    return fig


def figure_array(fig: Figure, dpi: int = 100) -> np.ndarray:
    """A figure drawn into an uint8 (H, W, 3) array."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    canvas = FigureCanvasAgg(fig)
    fig.set_dpi(dpi)
    canvas.draw()
    return np.asarray(canvas.buffer_rgba())[..., :3].copy()
