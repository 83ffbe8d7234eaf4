"""The Python API, on par with the CLI: ``vitlab.train``, ``vitlab.finetune``, ``vitlab.predict``.

    import vitlab
    result = vitlab.train(epochs=1, train_subset=512)       # the `vitlab train` defaults (mnist preset)
    result.model, result.history, result.best_val_acc      # the best weights, ready for inference

Settings are keyword arguments: a field name that only one section has (``epochs``, ``lr``,
``depth``, ``dataset``, ``path``...), a whole section (``train={"epochs": 1}``), or dotted keys in
``overrides`` (``{"model.drop_path_rate": 0.1}``). They go through the same resolver as the CLI's
flags (:func:`vitlab.resolve.resolve_config`), so the defaults and checks are the CLI's.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import torch

from vitlab.config import RunConfig
from vitlab.predict import load_model
from vitlab.predict import predict as _predict
from vitlab.resolve import SECTIONS, ConfigError, preset_name, resolve_config
from vitlab.training import train as _train

__all__ = ["Trained", "finetune", "predict", "settings", "train"]


@dataclass
class Trained:
    """A finished run: its best model (eval mode, on the CPU), what it trained on and how it went."""

    model: torch.nn.Module
    info: dict[str, Any]
    config: RunConfig
    history: list[dict[str, Any]]
    best_val_acc: float
    run_dir: Path

    @property
    def classes(self) -> list[str]:
        return list(self.info["classes"])

    @property
    def final(self) -> dict[str, Any]:
        """The last epoch's metrics."""
        return self.history[-1] if self.history else {}

    def predict(self, images: list, topk: int = 5) -> list[dict]:
        """Top-k classes of images (file paths, PIL images or image tensors), as :func:`predict`."""
        return _predict((self.model, self.info), images, topk=topk, device="cpu")


def train(preset: str | RunConfig | None = None, *, run_dir: str | Path | None = None, config: Any = None,
          overrides: Mapping[str, Any] | None = None, progress: bool = True, **settings_: Any) -> Trained:
    """Train from scratch as ``vitlab train`` does: ``preset`` (default: chosen by the data set, like the CLI),
    a YAML ``config``, then the settings; written to ``run_dir`` (default ``runs/PRESET-TIMESTAMP``)."""
    given = settings(settings_, overrides)
    cfg = resolve_config(preset, config, given)
    name = preset if isinstance(preset, str) else preset_name(preset, given) or "run"
    return _finish(_train(cfg, run_dir or _default_run_dir(name), progress=progress))


def finetune(pretrained: str = "vit_tiny_patch16_224.augreg_in21k_ft_in1k", dataset: str = "cifar10", mode: str = "full", *,
             run_dir: str | Path | None = None, config: Any = None, overrides: Mapping[str, Any] | None = None,
             progress: bool = True, **settings_: Any) -> Trained:
    """Fine-tune pretrained weights as ``vitlab finetune`` does (its defaults; the weights decide the model)."""
    given = settings({"finetune": {"pretrained": pretrained, "mode": mode}, "data": {"dataset": dataset}})
    for section, values in settings(settings_, overrides).items():
        given[section] = {**given.get(section, {}), **values} if isinstance(values, Mapping) else values
    cfg = resolve_config(None, config, given, finetune=True)
    return _finish(_train(cfg, run_dir or _default_run_dir(f"finetune-{Path(dataset).name}"), progress=progress))


def predict(model, images: list, topk: int = 5, device: str = "auto") -> list[dict]:
    """Top-k classes for images (file paths, PIL images or tensors) from a checkpoint, a run directory,
    pretrained weights (registry name or file), or a :class:`Trained` result."""
    if isinstance(model, Trained):
        model = (model.model, model.info)
    return _predict(model, images, topk=topk, device=device)


def settings(given: Mapping[str, Any], overrides: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Keyword settings as the resolver's sections: ``epochs=3`` -> ``{"train": {"epochs": 3}}``."""
    owners: dict[str, list[str]] = {}
    for section, cls in SECTIONS.items():
        for f in fields(cls):
            owners.setdefault(f.name, []).append(section)
    nested: dict[str, Any] = {}
    for key, value in given.items():
        if key in SECTIONS or key in ("preset", "arch"):
            nested[key] = {**nested.get(key, {}), **value} if isinstance(value, Mapping) else value
        elif len(owners.get(key, [])) == 1:
            nested.setdefault(owners[key][0], {})[key] = value
        elif key in owners:
            raise ConfigError(f"{key!r} is a setting of {' and '.join(owners[key])}: say which, e.g. "
                              f"{owners[key][0]}={{{key!r}: {value!r}}}")
        else:
            raise ConfigError(f"unknown setting {key!r}; settings are the fields of {', '.join(SECTIONS)} "
                              "(`vitlab train --help` lists them)")
    for key, value in (overrides or {}).items():
        section, _, name = key.partition(".")
        nested.setdefault(section, {})[name] = value
    return nested


def _finish(result) -> Trained:
    model, info = load_model(result.run_dir / "best.safetensors")
    return Trained(model.eval(), info, RunConfig.from_dict(info["run_config"]), result.history, result.best_val_acc,
                   result.run_dir)


def _default_run_dir(name: str) -> str:
    return f"runs/{name}-{time.strftime('%Y%m%d-%H%M%S')}"
