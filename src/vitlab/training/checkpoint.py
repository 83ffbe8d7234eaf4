"""Checkpoints and run directories, written atomically and read safely.

A checkpoint is ``NAME.safetensors`` (the weights, plus the description below embedded in
its metadata) and ``NAME.json`` beside it (the same description for people): the model
config, class names, preprocessing, metrics and library versions. Everything a killed run
needs to continue lives in one file, ``resume.pt``, read with ``weights_only=True``.
Every file is written to a temporary name and renamed into place, so a kill never leaves
a half-written file behind.
"""

from __future__ import annotations

import json
import platform
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from vitlab.atomic import atomic_write, atomic_write_text
from vitlab.baselines import build_model, model_arch
from vitlab.model import ViT, ViTConfig

FORMAT = "vitlab-checkpoint/1"
RESUME_FILE = "resume.pt"


class CheckpointError(ValueError):
    """A checkpoint that is missing, corrupt, or does not match the model."""


def versions() -> dict[str, str]:
    import torchvision

    from vitlab._version import __version__

    return {"vitlab": __version__, "torch": torch.__version__, "torchvision": torchvision.__version__,
            "python": platform.python_version()}


def save_checkpoint(path: str | Path, model: ViT, info: dict[str, Any]) -> Path:
    """Write ``path`` (.safetensors) and its ``.json`` sidecar; ``info`` must hold at least the classes."""
    path = Path(path).with_suffix(".safetensors")
    meta = {"format": FORMAT, "arch": model_arch(model), "model": model.cfg.to_dict(), **info, "versions": versions()}
    tensors = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    atomic_write(path, lambda tmp: save_file(tensors, str(tmp), metadata={"vitlab": json.dumps(meta)}))
    atomic_write_text(path.with_suffix(".json"), json.dumps(meta, indent=2) + "\n")
    return path


def read_checkpoint_info(path: str | Path) -> dict[str, Any]:
    """The description embedded in a checkpoint (config, classes, preprocessing, metrics)."""
    from safetensors import safe_open

    path = _checkpoint_path(path)
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
    except (SafetensorError, OSError) as exc:
        raise CheckpointError(f"{path} is not a readable safetensors file ({exc}); it may be truncated or corrupt") from exc
    if "vitlab" not in meta:
        raise CheckpointError(
            f"{path} has no vitlab metadata: it is not a checkpoint written by vitlab (for timm or other "
            "weights, build the model yourself and load the state dict)"
        )
    return json.loads(meta["vitlab"])


def load_checkpoint(path: str | Path, device: str | torch.device = "cpu") -> tuple[ViT, dict[str, Any]]:
    """Rebuild the model described by the checkpoint and load its weights (strictly)."""
    path = _checkpoint_path(path)
    info = read_checkpoint_info(path)
    model = build_model(ViTConfig(**info["model"]), info.get("arch", "vit"), init=False)  # loaded strictly below
    try:
        state = load_file(str(path), device=str(device))
    except (SafetensorError, OSError) as exc:
        raise CheckpointError(f"{path} could not be read ({exc}); it may be truncated or corrupt") from exc
    load_state_dict_checked(model, state, source=str(path))
    return model.to(device).eval(), info


def load_state_dict_checked(model: torch.nn.Module, state: dict[str, torch.Tensor], source: str = "state dict") -> None:
    """``load_state_dict(strict=True)`` with one message that lists every problem."""
    own = model.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    mis_shaped = [f"{k}: checkpoint {tuple(state[k].shape)} vs model {tuple(own[k].shape)}"
                  for k in sorted(set(own) & set(state)) if own[k].shape != state[k].shape]
    if missing or unexpected or mis_shaped:
        parts = [f"{source} does not match the model"]
        if missing:
            parts.append(f"missing keys: {missing}")
        if unexpected:
            parts.append(f"unexpected keys: {unexpected}")
        if mis_shaped:
            parts.append(f"mis-shaped: {mis_shaped}")
        raise CheckpointError("; ".join(parts))
    model.load_state_dict(state, strict=True)


def _checkpoint_path(path: str | Path) -> Path:
    path = Path(path)
    if path.is_dir():  # a run directory: take its best checkpoint
        path = path / "best.safetensors"
    if path.suffix == ".json":
        path = path.with_suffix(".safetensors")
    if not path.exists():
        raise CheckpointError(f"checkpoint {path} does not exist")
    return path


def save_resume_state(run_dir: Path, state: dict[str, Any]) -> None:
    atomic_write(run_dir / RESUME_FILE, lambda tmp: torch.save(state, tmp))


def load_resume_state(run_dir: Path) -> dict[str, Any] | None:
    """The state saved after the last finished epoch, or None if no epoch finished yet."""
    path = run_dir / RESUME_FILE
    if not path.exists():
        return None
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise CheckpointError(f"{path} could not be loaded safely ({exc}); it may be corrupt") from exc
