"""Predict the classes of image files with a checkpoint."""

from __future__ import annotations

from pathlib import Path

import torch

from vitlab.data import Preprocess
from vitlab.data.datasets import resize_and_crop
from vitlab.training.checkpoint import load_checkpoint
from vitlab.training.trainer import resolve_device


def load_image(path: str | Path, in_chans: int, image_size: tuple[int, int] | None = None, crop_pct: float = 1.0,
               interpolation: str = "bicubic") -> torch.Tensor:
    """Read an image file as uint8 (C, H, W) with the model's channel count, resized and cropped
    as the training data was (shorter side to ``image_size / crop_pct``, center crop)."""
    from PIL import Image, UnidentifiedImageError
    from torchvision.transforms.v2 import functional as TF

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"image {path} does not exist")
    try:
        with Image.open(path) as im:
            img = im.convert("L" if in_chans == 1 else "RGB")
            if image_size is not None:
                img = resize_and_crop(img, image_size, crop_pct, interpolation)
            return TF.pil_to_tensor(img)
    except UnidentifiedImageError as exc:
        raise ValueError(f"{path} is not an image file PIL can read") from exc


def load_model(source: str | Path, device: str | torch.device = "cpu") -> tuple[torch.nn.Module, dict]:
    """A vitlab checkpoint or run directory, or pretrained weights (registry name or file), ready for inference.

    Returns the model and a description with at least ``classes`` and ``preprocessing``.
    """
    from vitlab.training.checkpoint import CheckpointError

    try:
        return load_checkpoint(source, device=device)
    except CheckpointError as checkpoint_error:
        from vitlab.pretrained import WeightsError, load_pretrained
        from vitlab.pretrained.load import registry_entry_for

        if not Path(source).exists() and registry_entry_for(str(source)) is None:
            raise checkpoint_error
        try:
            model, pinfo = load_pretrained(source)
        except WeightsError as exc:
            raise CheckpointError(f"{source} is neither a vitlab checkpoint nor loadable weights: {exc}") from exc
        return model.to(device).eval(), {"classes": pinfo.classes, "preprocessing": pinfo.preprocessing_dict(),
                                         "pretrained": pinfo.name}


def model_preprocess(model: torch.nn.Module, info: dict) -> Preprocess:
    """The normalisation (and resize) ``info["preprocessing"]`` describes, for this model's input."""
    prep = info["preprocessing"]
    return Preprocess(prep["mean"], prep["std"], model.cfg.in_chans, tuple(model.cfg.img_size),
                      resize_mode=prep.get("interpolation", "bicubic"))


def load_model_images(model: torch.nn.Module, info: dict, paths: list[str | Path]) -> torch.Tensor:
    """Image files as uint8 (B, C, H, W), resized and cropped as the model's data was."""
    prep = info["preprocessing"]
    return torch.stack([load_image(p, model.cfg.in_chans, tuple(model.cfg.img_size), prep.get("crop_pct", 1.0),
                                   prep.get("interpolation", "bicubic")) for p in paths])


@torch.no_grad()
def predict_files(checkpoint: str | Path, images: list[str], topk: int = 5, device: str = "auto") -> list[dict]:
    """Top-k class names and probabilities for each image file."""
    dev = resolve_device(device)
    model, info = load_model(checkpoint, device=dev)
    classes = info["classes"]
    batch = load_model_images(model, info, images)
    probs = model(model_preprocess(model, info)(batch.to(dev))).softmax(-1).cpu()
    top = probs.topk(min(topk, probs.shape[1]), dim=1)
    return [
        {"image": str(path), "classes": [classes[i] for i in idx.tolist()], "indices": idx.tolist(),
         "probs": [round(p, 6) for p in val.tolist()]}
        for path, val, idx in zip(images, top.values, top.indices)
    ]
