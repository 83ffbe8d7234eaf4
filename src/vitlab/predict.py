"""Predict the classes of image files with a checkpoint."""

from __future__ import annotations

from pathlib import Path

import torch

from vitlab.data import Preprocess
from vitlab.training.checkpoint import load_checkpoint
from vitlab.training.trainer import resolve_device


def load_image(path: str | Path, in_chans: int) -> torch.Tensor:
    """Read an image file as uint8 (C, H, W) with the model's channel count."""
    from PIL import Image, UnidentifiedImageError
    from torchvision.transforms.v2 import functional as TF

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"image {path} does not exist")
    try:
        with Image.open(path) as im:
            return TF.pil_to_tensor(im.convert("L" if in_chans == 1 else "RGB"))
    except UnidentifiedImageError as exc:
        raise ValueError(f"{path} is not an image file PIL can read") from exc


def resize_for_model(img: torch.Tensor, image_size: tuple[int, int]) -> torch.Tensor:
    """Shorter side to the model's size (bicubic), then a center crop: the cache's own preprocessing."""
    from torchvision.transforms.v2 import functional as TF

    if tuple(img.shape[1:]) == tuple(image_size):
        return img
    img = TF.resize(img, [min(image_size)], interpolation=TF.InterpolationMode.BICUBIC, antialias=True)
    return TF.center_crop(img, list(image_size))


@torch.no_grad()
def predict_files(checkpoint: str | Path, images: list[str], topk: int = 5, device: str = "auto") -> list[dict]:
    """Top-k class names and probabilities for each image file."""
    dev = resolve_device(device)
    model, info = load_checkpoint(checkpoint, device=dev)
    prep, classes = info["preprocessing"], info["classes"]
    size = tuple(model.cfg.img_size)
    preprocess = Preprocess(prep["mean"], prep["std"], model.cfg.in_chans, size)
    batch = torch.stack([resize_for_model(load_image(p, model.cfg.in_chans), size) for p in images])
    probs = model(preprocess(batch.to(dev))).softmax(-1).cpu()
    top = probs.topk(min(topk, probs.shape[1]), dim=1)
    return [
        {"image": str(path), "classes": [classes[i] for i in idx.tolist()], "indices": idx.tolist(),
         "probs": [round(p, 6) for p in val.tolist()]}
        for path, val, idx in zip(images, top.values, top.indices)
    ]
