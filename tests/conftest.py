"""Shared fixtures: the read-only shared data root, a private cache, and tiny image folders."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

REPO = Path(__file__).resolve().parents[1]


def shared_dir(kind: str) -> Path | None:
    """``$VITLAB_DATA_DIR`` (or ``../shared/data`` beside the checkout) when it exists."""
    env = os.environ.get("VITLAB_DATA_DIR") if kind == "data" else os.environ.get("VITLAB_WEIGHTS_DIR")
    candidates = [Path(env)] if env else []
    candidates.append(REPO.parent / "shared" / kind)
    return next((p for p in candidates if p.is_dir()), None)


@pytest.fixture(scope="session")
def shared_data() -> Path:
    root = shared_dir("data")
    if root is None or not (root / "MNIST" / "raw").is_dir():
        pytest.skip("shared data (MNIST) not available; set VITLAB_DATA_DIR")
    return root


@pytest.fixture(autouse=True)
def private_cache(tmp_path_factory, monkeypatch) -> Path:
    """Every test writes decoded tensors into a session-wide temporary cache, never into ~/.cache."""
    cache = tmp_path_factory.getbasetemp() / "vitlab-cache"
    monkeypatch.setenv("VITLAB_CACHE_DIR", str(cache))
    return cache


def write_pattern_folder(root: Path, split_counts: dict[str, int], size: int = 16, mode: str = "RGB",
                         classes: tuple[str, ...] = ("circle", "cross", "stripes"), seed: int = 0) -> Path:
    """An ImageFolder of simple, learnable patterns: one class per drawing, with noise."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size]
    c = (size - 1) / 2
    shapes = {
        "circle": ((yy - c) ** 2 + (xx - c) ** 2 < (size / 3) ** 2),
        "cross": (np.abs(yy - c) < size / 8) | (np.abs(xx - c) < size / 8),
        "stripes": (xx // max(1, size // 8)) % 2 == 0,
        "square": (np.abs(yy - c) < size / 4) & (np.abs(xx - c) < size / 4),
    }
    for split, count in split_counts.items():
        for name in classes:
            folder = root / split / name if split else root / name
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(count):
                base = shapes[name].astype(np.float32) * 200 + rng.normal(0, 25, (size, size))
                pixels = np.clip(base, 0, 255).astype(np.uint8)
                if mode == "RGB":
                    pixels = np.stack([pixels, np.roll(pixels, 1, 0), pixels[::-1]], axis=-1)
                Image.fromarray(pixels, mode=None).save(folder / f"{name}_{i:03d}.png")
    return root


@pytest.fixture(scope="session")
def pattern_folder(tmp_path_factory) -> Path:
    """train/ and val/ with 3 classes of 16x16 RGB patterns (40 + 10 per class)."""
    return write_pattern_folder(tmp_path_factory.mktemp("patterns"), {"train": 40, "val": 10})


@pytest.fixture(scope="session")
def random_weights(tmp_path_factory) -> Path:
    """A small 'pretrained' ViT (random weights) in timm's layout with a 1000-class head, saved as safetensors."""
    import torch
    from safetensors.torch import save_file

    from vitlab.model import ViT, ViTConfig

    torch.manual_seed(0)
    model = ViT(ViTConfig(img_size=32, patch_size=8, embed_dim=48, depth=2, num_heads=3, num_classes=1000))
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.02)
    path = tmp_path_factory.mktemp("weights") / "tiny_vit.safetensors"
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path))
    return path
