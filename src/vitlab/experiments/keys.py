"""Dotted setting names (``model.patch_size``, ``train.lr``, ``preset``): which exist, and how they print.

A setting is a ``vitlab train`` flag without its dashes. Run configurations are compared
as flat ``{dotted key: value}`` dicts, leaving out the settings that only say where or how
fast a run goes (:data:`RUNTIME_KEYS`), never what it learns.
"""

from __future__ import annotations

import difflib
from dataclasses import fields
from typing import Any

from vitlab.config import DataConfig, RunConfig, TrainConfig
from vitlab.model import ViTConfig

SECTIONS = {"model": ViTConfig, "data": DataConfig, "train": TrainConfig}
TOP_LEVEL = ("preset", *(f.name for f in fields(RunConfig) if f.name not in SECTIONS and f.name != "finetune"))
"""Settings outside the sections (``preset``, ``arch``)."""
SETTINGS = (*TOP_LEVEL, *(f"{section}.{f.name}" for section, cls in SECTIONS.items() for f in fields(cls)))
SEED_KEY = "train.seed"
RUNTIME_KEYS = frozenset({"data.data_dir", "data.cache_dir", "data.download", "data.num_workers", "data.max_cache_gib",
                          "train.device", "train.threads", "train.eval_batch_size", "train.tracker",
                          "train.tracker_project"})
"""Where and how fast a run goes: these may differ between runs of one configuration."""


def check_setting(key: Any, where: str) -> str:
    """``key`` if it names a ``vitlab train`` setting, else a ValueError that suggests the right name."""
    if not isinstance(key, str) or key not in SETTINGS:
        close = [s for s in SETTINGS if s.startswith(str(key))][:3] or difflib.get_close_matches(str(key), SETTINGS, n=3)
        hint = f"; did you mean {' or '.join(map(repr, close))}?" if close else "."
        if isinstance(key, str) and key in SECTIONS:
            hint = f"; write one dotted key per setting, e.g. '{key}.{fields(SECTIONS[key])[0].name}'."
        raise ValueError(f"{where}: unknown setting {key!r}{hint} Settings are `vitlab train` flags without the dashes: "
                         f"{', '.join(TOP_LEVEL)}, model.*, data.*, train.* (`vitlab train --help` lists them)")
    if key == SEED_KEY:
        raise ValueError(f"{where}: set the seeds with the sweep's `seeds: [0, 1, ...]` list, not with {SEED_KEY}")
    return key


def flatten(config: dict[str, Any]) -> dict[str, Any]:
    """``{"arch": "vit", "model": {"depth": 4}}`` -> ``{"arch": "vit", "model.depth": 4}`` (as a run's config.yaml is)."""
    flat = {}
    for name, value in config.items():
        if isinstance(value, dict):
            flat.update({f"{name}.{key}": inner for key, inner in value.items()})
        else:
            flat[name] = value
    return flat


def format_value(value: Any) -> str:
    """A setting's value as people write it: ``[4, 4]`` -> ``4``, ``[4, 2]`` -> ``4x2``, ``0.001`` -> ``0.001``."""
    if isinstance(value, (list, tuple)):
        return format_value(value[0]) if value and all(v == value[0] for v in value) else "x".join(map(format_value, value))
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, float):
        return f"{value:g}"
    return "none" if value is None else str(value)


def short_names(keys: list[str]) -> dict[str, str]:
    """Each key's last part (``patch_size``) where no other key ends the same, else the whole key."""
    last = [key.rsplit(".", 1)[-1] for key in keys]
    return {key: name if last.count(name) == 1 else key for key, name in zip(keys, last)}
