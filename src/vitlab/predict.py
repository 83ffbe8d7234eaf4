"""Predict the classes of image files with a checkpoint."""

from __future__ import annotations

from pathlib import Path

import torch

from vitlab.data import Preprocess
from vitlab.data.datasets import IMAGE_EXTENSIONS, BadImageError, open_image, resize_and_crop
from vitlab.device import resolve_device
from vitlab.hub import load_hub_folder
from vitlab.model import is_model_folder
from vitlab.names import did_you_mean
from vitlab.training.checkpoint import load_checkpoint


def load_image(path: str | Path, in_chans: int, image_size: tuple[int, int] | None = None, crop_pct: float = 1.0,
               interpolation: str = "bicubic", crop_mode: str = "center") -> torch.Tensor:
    """Read an image file as uint8 (C, H, W) with the model's channel count, resized and cropped
    as the training data was (shorter side to ``image_size / crop_pct``, center crop)."""
    from torchvision.transforms.v2 import functional as TF

    path = Path(path)
    if path.is_dir():
        raise FileNotFoundError(f"{path} is a folder, not an image file (`vitlab predict` takes folders: their images)")
    if not path.is_file():
        raise FileNotFoundError(f"image {path} does not exist")
    img = open_image(path, "L" if in_chans == 1 else "RGB")
    if image_size is not None:
        img = resize_and_crop(img, image_size, crop_pct, interpolation, crop_mode)
    return TF.pil_to_tensor(img)


def load_model(source: str | Path, device: str | torch.device = "cpu") -> tuple[torch.nn.Module, dict]:
    """A vitlab checkpoint or run directory, or pretrained weights (registry name or file), ready for inference.

    Returns the model and a description with at least ``classes`` and ``preprocessing``.
    """
    from vitlab.training.checkpoint import CheckpointError

    if str(source).startswith("hf-hub:") or is_model_folder(source):  # written by `vitlab push`
        return load_hub_folder(source, device=device)
    try:
        return load_checkpoint(source, device=device)
    except CheckpointError as checkpoint_error:
        from vitlab.pretrained import WEIGHTS, WeightsError, load_pretrained
        from vitlab.pretrained.load import registry_entry_for
        from vitlab.pretrained.registry import WEIGHT_ALIASES

        if not Path(source).exists() and registry_entry_for(str(source)) is None:
            hint = did_you_mean(str(source), [*WEIGHTS, *WEIGHT_ALIASES], cutoff=0.6)
            raise CheckpointError(f"{source} does not exist as a checkpoint or run directory and is not a registry name "
                                  f"of pretrained weights; {hint}`vitlab weights` lists the names") from checkpoint_error
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
    return torch.stack([model_image(p, model, info) for p in paths])


def model_image(image, model: torch.nn.Module, info: dict) -> torch.Tensor:
    """One image (file path, PIL image or tensor) as the uint8 (C, H, W) the model's data was: its channels and size,
    resized and cropped as ``info["preprocessing"]`` says."""
    prep = info["preprocessing"]
    return to_image_tensor(image, model.cfg.in_chans, tuple(model.cfg.img_size), prep.get("crop_pct", 1.0),
                           prep.get("interpolation", "bicubic"), prep.get("crop_mode", "center"))


def to_image_tensor(image, in_chans: int, image_size: tuple[int, int], crop_pct: float = 1.0,
                    interpolation: str = "bicubic", crop_mode: str = "center") -> torch.Tensor:
    """A file path, a PIL image, or an image tensor (C, H, W): uint8, or float in [0, 1]) as the uint8
    (C, H, W) the model's data was, resized and cropped the same way."""
    if isinstance(image, (str, Path)):
        return load_image(image, in_chans, image_size, crop_pct, interpolation, crop_mode)
    if isinstance(image, torch.Tensor):
        if image.dim() != 3:
            raise ValueError(f"an image tensor is (channels, height, width); got shape {tuple(image.shape)}")
        if image.is_floating_point():
            image = (image.clamp(0, 1) * 255).round().to(torch.uint8)
        return resize_and_crop(image, image_size, crop_pct, interpolation, crop_mode)
    from PIL import Image
    from torchvision.transforms.v2 import functional as TF

    if not isinstance(image, Image.Image):
        raise TypeError(f"expected an image file path, a PIL image or a tensor, got {type(image).__name__}")
    return TF.pil_to_tensor(resize_and_crop(image.convert("L" if in_chans == 1 else "RGB"), image_size, crop_pct,
                                            interpolation, crop_mode))


@torch.no_grad()
def predict(model, images: list, topk: int = 5, device: str = "auto", errors: str = "raise") -> list[dict]:
    """Top-k class names and probabilities for each image (file paths, PIL images or image tensors).

    ``model``: a checkpoint, a run directory, pretrained weights (registry name or file), or a
    ``(model, info)`` pair from :func:`load_model`. ``errors="report"``: an image that cannot be read
    gets ``{"image": ..., "error": ...}`` and the others their results; ``"raise"``: the first one raises.
    """
    dev = resolve_device(device)
    model, info = model if isinstance(model, tuple) else load_model(model, device=dev)
    model = model.to(dev).eval()
    classes = info["classes"]
    items, tensors = [], []
    for i, image in enumerate(images):
        items.append({"image": str(image) if isinstance(image, (str, Path)) else f"image {i}"})
        try:
            tensors.append(model_image(image, model, info))
        except (BadImageError, FileNotFoundError, ValueError, TypeError) as exc:
            if errors == "raise":
                raise
            items[-1]["error"] = str(exc)
    readable = [item for item in items if "error" not in item]
    if tensors:
        probs = model(model_preprocess(model, info)(torch.stack(tensors).to(dev))).softmax(-1).cpu()
        top = probs.topk(min(topk, probs.shape[1]), dim=1)
        for item, values, indices in zip(readable, top.values, top.indices):
            item.update({"classes": [classes[j] for j in indices.tolist()], "indices": indices.tolist(),
                         "probs": [round(p, 6) for p in values.tolist()]})
    return items


def predict_files(checkpoint: str | Path, images: list[str], topk: int = 5, device: str = "auto") -> list[dict]:
    """Top-k class names and probabilities for each image file (a folder: each of its image files, sorted); a file
    that cannot be read, or a folder without images, gets an ``error``."""
    files, empty = [], []
    for name in images:
        if Path(name).is_dir():
            found = sorted(str(p) for p in Path(name).iterdir() if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS
                           and not p.name.startswith("."))
            files += found
            if not found:
                empty.append({"image": name, "error": f"folder {name} holds no image files ({', '.join(IMAGE_EXTENSIONS)})"})
        else:
            files.append(name)
    return predict(checkpoint, files, topk=topk, device=device, errors="report") + empty
