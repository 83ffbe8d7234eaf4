"""Batched augmentation and normalisation of uint8 image batches, on whatever device they live.

One random affine transform per image, applied to the whole batch with a single
``affine_grid`` + ``grid_sample``: small rotations/shifts/scales for digits, pad-and-crop
shifts plus horizontal flips for CIFAR. RandAugment (torchvision) runs per image. Random
erasing, if asked for, follows normalisation.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

AUGMENTATIONS = ("none", "digits", "flip", "crop_flip", "randaugment")
FLIP_AUGMENTATIONS = ("flip", "crop_flip")  # those that mirror images (RandAugment's operations never do)


def random_affine(
    x: torch.Tensor,
    generator: torch.Generator,
    degrees: float = 0.0,
    translate_px: float = 0.0,
    scale: tuple[float, float] = (1.0, 1.0),
    flip: bool = False,
    integer_shift: bool = False,
) -> torch.Tensor:
    """Apply an independent random affine map to every image of a float batch (B, C, H, W).

    ``integer_shift`` draws whole-pixel shifts and samples nearest pixels, which is exactly
    a random crop from a zero-padded image (the classic CIFAR augmentation).
    """
    b, _, h, w = x.shape
    cpu = dict(generator=generator)  # draw on the CPU so results do not depend on the device

    def uniform(lo: float, hi: float) -> torch.Tensor:
        return torch.rand(b, **cpu) * (hi - lo) + lo

    angle = uniform(-degrees, degrees) * math.pi / 180
    zoom = uniform(*scale)
    if integer_shift:
        limit = int(translate_px)
        tx = torch.randint(-limit, limit + 1, (b,), **cpu).float()
        ty = torch.randint(-limit, limit + 1, (b,), **cpu).float()
    else:
        tx, ty = uniform(-translate_px, translate_px), uniform(-translate_px, translate_px)
    mirror = torch.where(torch.rand(b, **cpu) < 0.5, -1.0, 1.0) if flip else torch.ones(b)
    # theta maps output coordinates to input coordinates, in [-1, 1] units
    cos, sin = torch.cos(angle) / zoom, torch.sin(angle) / zoom
    theta = torch.stack(
        [torch.stack([cos * mirror, -sin * h / w, 2 * tx / w], 1), torch.stack([sin * mirror * w / h, cos, 2 * ty / h], 1)],
        dim=1,
    ).to(x.device, x.dtype)
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode="nearest" if integer_shift else "bilinear", padding_mode="zeros",
                         align_corners=False)


def augment_batch(x: torch.Tensor, kind: str, generator: torch.Generator) -> torch.Tensor:
    """Augment a uint8 batch; returns float in [0, 1]."""
    if kind == "randaugment":
        from torchvision.transforms import v2

        torch_state = torch.get_rng_state()
        torch.manual_seed(int(torch.randint(2**31, (1,), generator=generator)))  # v2 draws from the global RNG
        ops = v2.RandAugment()
        x = torch.stack([ops(img) for img in x.cpu()]).to(x.device)
        torch.set_rng_state(torch_state)
        return x.float().div_(255)
    x = x.float().div_(255)
    if kind == "none":
        return x
    if kind == "digits":
        return random_affine(x, generator, degrees=10, translate_px=0.1 * x.shape[-1], scale=(0.9, 1.1))
    if kind == "flip":
        mirror = torch.rand(x.shape[0], generator=generator) < 0.5
        return torch.where(mirror.to(x.device).view(-1, 1, 1, 1), x.flip(-1), x)
    if kind == "crop_flip":
        return random_affine(x, generator, translate_px=round(x.shape[-1] / 8), flip=True, integer_shift=True)
    raise ValueError(f"unknown augmentation {kind!r}; choose one of {AUGMENTATIONS}")


def random_erasing(
    x: torch.Tensor,
    generator: torch.Generator,
    probability: float = 0.25,
    area: tuple[float, float] = (0.02, 1 / 3),
    aspect: tuple[float, float] = (0.3, 10 / 3),
) -> torch.Tensor:
    """Replace one random rectangle of each image, with the given probability, by N(0, 1) noise.

    Zhong et al. 2017, "Random Erasing Data Augmentation" (timm's ``--reprob`` in ``pixel`` mode):
    the rectangle covers a uniform fraction ``area`` of the image, with a log-uniform aspect ratio
    (height / width) in ``aspect``, clipped to the image. Meant for normalised batches (B, C, H, W),
    where unit-variance noise has the scale of the data.
    """
    b, c, h, w = x.shape
    cpu = dict(generator=generator)  # draw on the CPU so results do not depend on the device
    erase = torch.rand(b, **cpu) < probability
    frac = torch.rand(b, **cpu) * (area[1] - area[0]) + area[0]
    ratio = torch.exp(torch.rand(b, **cpu) * math.log(aspect[1] / aspect[0]) + math.log(aspect[0]))
    eh = torch.sqrt(frac * h * w * ratio).round().clamp(1, h).long()
    ew = torch.sqrt(frac * h * w / ratio).round().clamp(1, w).long()
    top = (torch.rand(b, **cpu) * (h - eh + 1)).long()
    left = (torch.rand(b, **cpu) * (w - ew + 1)).long()
    rows, cols = torch.arange(h), torch.arange(w)
    in_rows = (rows >= top[:, None]) & (rows < (top + eh)[:, None])  # (B, H)
    in_cols = (cols >= left[:, None]) & (cols < (left + ew)[:, None])  # (B, W)
    mask = (in_rows[:, :, None] & in_cols[:, None, :] & erase[:, None, None])[:, None]  # (B, 1, H, W)
    noise = torch.randn(x.shape, **cpu)
    return torch.where(mask.to(x.device), noise.to(x.device, x.dtype), x)


class Preprocess:
    """uint8 batch -> float model input: resize, augment (training), channel match, normalise, erase (training)."""

    def __init__(self, mean, std, in_chans: int, image_size: tuple[int, int], augment: str = "none",
                 resize_mode: str = "bicubic", erase_prob: float = 0.0) -> None:
        if augment not in AUGMENTATIONS:
            raise ValueError(f"unknown augmentation {augment!r}; choose one of {AUGMENTATIONS}")
        if not 0.0 <= erase_prob <= 1.0:
            raise ValueError(f"random erasing probability must lie in [0, 1]; got {erase_prob}")
        self.erase_prob = erase_prob
        self.in_chans, self.image_size, self.augment, self.resize_mode = in_chans, tuple(image_size), augment, resize_mode
        self.mean = torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1)
        self.std = torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1)

    def __call__(self, x: torch.Tensor, train: bool = False, generator: torch.Generator | None = None,
                 size: tuple[int, int] | None = None) -> torch.Tensor:
        """``size``: resize to this (height, width) instead of ``image_size`` (progressive resizing)."""
        size = self.image_size if size is None else tuple(size)
        randomised = train and (self.augment != "none" or self.erase_prob > 0)
        if randomised and generator is None:
            raise ValueError("training augmentation needs a torch.Generator (for repeatable runs)")
        if train and self.augment != "none":
            x = augment_batch(x, self.augment, generator)
        else:
            x = x.float().div_(255)
        if tuple(x.shape[-2:]) != size:
            x = F.interpolate(x, size=size, mode=self.resize_mode, align_corners=False,
                              antialias=self.resize_mode in ("bilinear", "bicubic")).clamp_(0, 1)
        mean, std = self.mean.to(x.device), self.std.to(x.device)
        if x.shape[1] == 1 and self.in_chans == 3:  # grayscale into an RGB model
            x, mean, std = x.expand(-1, 3, -1, -1), mean.expand(1, 3, 1, 1), std.expand(1, 3, 1, 1)
        elif x.shape[1] == 3 and self.in_chans == 1:  # RGB into a grayscale model (ITU-R 601 luma)
            x = (x * torch.tensor([0.299, 0.587, 0.114], device=x.device).view(1, 3, 1, 1)).sum(1, keepdim=True)
            mean, std = mean.mean(1, keepdim=True), std.mean(1, keepdim=True)
        elif x.shape[1] != self.in_chans:
            raise ValueError(f"images have {x.shape[1]} channels but the model expects {self.in_chans}")
        x = (x - mean) / std
        if train and self.erase_prob > 0:
            x = random_erasing(x, generator, self.erase_prob)
        return x
