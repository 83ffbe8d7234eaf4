"""Validation: loss, accuracy, the confusion matrix and each image's prediction, optionally with flip TTA."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from vitlab.data import ImageSplit, Preprocess, iterate_batches, num_batches
from vitlab.device import autocast_context


@torch.no_grad()
def evaluate(model: torch.nn.Module, split: ImageSplit, preprocess: Preprocess, batch_size: int, device: torch.device,
             precision: str = "auto", num_classes: int | None = None, progress: bool = False,
             flip_tta: bool = False) -> dict[str, Any]:
    """Loss, accuracy, the confusion matrix (rows: true class, columns: predicted), and each image's
    prediction and its probability (``predicted``, ``confidence``, in split order).

    ``flip_tta`` (test-time augmentation) classifies each image and its mirror image and averages
    the two probability vectors; only meaningful for a model trained with horizontal flips.
    """
    model.eval()
    num_classes = num_classes or model.num_classes
    confusion = torch.zeros(num_classes, num_classes, dtype=torch.long)
    total_loss, seen, predicted, confidence = 0.0, 0, [], []
    batches = iterate_batches(split, batch_size)
    for images, labels in tqdm(batches, total=num_batches(split, batch_size), desc="eval", leave=False,
                               disable=not progress):
        x = preprocess(images.to(device, non_blocking=True))
        with autocast_context(device, precision):
            logits = model(x)
            if flip_tta:
                mirrored = model(x.flip(-1))
        logits, labels = logits.float().cpu(), labels.cpu()
        if flip_tta:  # log of the mean probability: the loss and the prediction of the averaged model
            mean_probs = (logits.softmax(1) + mirrored.float().cpu().softmax(1)) / 2
            logits = mean_probs.clamp_min(torch.finfo(mean_probs.dtype).tiny).log()
        total_loss += F.cross_entropy(logits, labels, reduction="sum").item()
        seen += len(labels)
        probs, guess = logits.softmax(1).max(1)
        predicted.append(guess)
        confidence.append(probs)
        confusion += torch.bincount(labels * num_classes + guess, minlength=num_classes**2).view(num_classes, num_classes)
    correct = confusion.diag().sum().item()
    return {"loss": total_loss / max(1, seen), "acc": correct / max(1, seen), "confusion": confusion,
            "predicted": torch.cat(predicted) if predicted else torch.zeros(0, dtype=torch.long),
            "confidence": torch.cat(confidence) if confidence else torch.zeros(0)}
