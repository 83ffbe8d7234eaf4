"""Configuration, resolved in exactly one place.

    preset (`vitlab presets`)  ->  YAML files (--config)  ->  flags (--train.epochs 3)
      ->  what the data decides (classes, channels, input size, augmentation) and, when fine-tuning,
          what the weights decide (architecture, preprocessing), for every field the user left alone
      ->  every value checked  ->  a frozen :class:`RunConfig`

`vitlab train`, `vitlab finetune`, `vitlab sweep`, `vitlab info`, the architecture figure, the Python
API (:mod:`vitlab.api`) and :func:`vitlab.training.train` all come through :func:`resolve_config`;
the training loop only reads its result. The one later decision, the number of epochs a time budget
allows, is made here too (:func:`with_planned_epochs`).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import fields, replace
from pathlib import Path
from typing import Any

import torch
import yaml

from vitlab.config import DataConfig, FinetuneConfig, RunConfig, TrainConfig
from vitlab.data.probe import BUILTIN_FACTS, DataFacts, probe_data
from vitlab.model import ViTConfig, model_config
from vitlab.names import did_you_mean
from vitlab.presets import FINETUNE_AUGMENT, FINETUNE_BASE, FINETUNE_DEFAULT, RUN_PRESETS, finetune_config, run_config

DEFAULT_PRESET = "mnist"
PHOTO_PRESET = "photos"
"""The preset for image folders and hf: sources when none is named: its input size follows the images."""
SECTIONS = {"model": ViTConfig, "data": DataConfig, "train": TrainConfig, "finetune": FinetuneConfig}
ARCHITECTURE_KEYS = ("embed_dim", "depth", "num_heads", "mlp_ratio", "qkv_bias", "patch_embed", "stem_full_res_convs",
                     "stem_stage_convs", "pos_embed", "class_token", "pool", "img_size", "patch_size")
"""What ``--model NAME`` (a model preset) sets; the data still decides channels and classes."""


class ConfigError(ValueError):
    """A configuration that cannot work; the message names the flag and how to fix it."""


# ----------------------------------------------------------------------------- the resolver


def resolve_config(preset: str | RunConfig | None = None, config: str | Path | Sequence[str | Path] | Mapping | None = None,
                   overrides: Mapping[str, Any] | None = None, *, finetune: bool = False, facts: bool = True) -> RunConfig:
    """The run that a preset, YAML files and single settings describe, completed by the data and checked.

    ``preset``: a run preset's name, or a whole :class:`RunConfig` (taken as given, except the head
    size, which follows the data, and, when fine-tuning, what the weights decide). Default: the
    preset named in a YAML file, else one chosen by the data set (``mnist``, ``cifar10`` ... or
    ``photos`` for image folders and hf: sources). ``config``: YAML file(s) or a dict with
    ``model``/``data``/``train``/``finetune`` sections. ``overrides``: settings as dotted keys
    (``{"train.epochs": 3}``) or sections, applied last. ``finetune``: start from pretrained
    weights (``vitlab finetune``'s defaults). ``facts=False`` skips looking at the data.
    """
    user = _merge(*(_sections(layer, where) for layer, where in _layers(config)), _sections(overrides or {}, "overrides"))
    finetune = finetune or "finetune" in user or (isinstance(preset, RunConfig) and preset.finetune is not None)
    name = preset_name(preset, user, finetune)
    base = preset if isinstance(preset, RunConfig) else _named_preset(name, finetune)
    merged = _merge(base.to_dict(), {k: v for k, v in user.items() if k != "preset"})
    if finetune and "finetune" not in merged:
        merged["finetune"] = FINETUNE_BASE.to_dict()["finetune"]
    explicit = _dotted(user) if not isinstance(preset, RunConfig) else _dotted(merged) - {"model.num_classes"}
    if isinstance(preset, RunConfig) and finetune:  # a RunConfig's preprocessing defaults are not choices
        explicit -= {"data.interpolation", "data.crop_pct", "data.crop_mode"}
    if finetune:
        _from_weights(merged, explicit)
    if facts:
        _from_data(merged, explicit, _tailored(base, merged, finetune, isinstance(preset, RunConfig)), base.model.img_size)
    return check_config(_build(merged))


def preset_name(preset: str | RunConfig | None, user: Mapping[str, Any], finetune: bool = False) -> str | None:
    """The run preset that gives the defaults: the one named, else the one the data set calls for."""
    if isinstance(preset, RunConfig):
        return None
    if preset or user.get("preset"):
        return preset or user["preset"]
    if finetune:
        return FINETUNE_DEFAULT
    dataset = str(user.get("data", {}).get("dataset", "mnist")).lower().replace("-", "_")
    return dataset if dataset in BUILTIN_FACTS and dataset in RUN_PRESETS else PHOTO_PRESET


def resumed_config(saved: Mapping[str, Any], where: str) -> RunConfig:
    """A run directory's ``config.yaml`` (already resolved when the run started), checked again."""
    try:
        return check_config(_build(dict(saved)))
    except (TypeError, KeyError) as exc:
        raise ConfigError(f"{where} is not a configuration this vitlab can read ({exc})") from exc


def with_planned_epochs(cfg: RunConfig, epochs: int) -> RunConfig:
    """The run with the number of epochs a time budget planned (the resolver's one decision made during training)."""
    return check_config(replace(cfg, train=replace(cfg.train, epochs=max(1, int(epochs)))))


def field_overrides(items: Sequence[str]) -> dict[str, Any]:
    """``["depth=2", "img_size=[32,48]"]`` -> ``{"depth": 2, "img_size": [32, 48]}`` (values read as YAML), for
    :func:`resolve_model`'s overrides."""
    overrides = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep:
            raise ConfigError(f"expected FIELD=VALUE, got {item!r}")
        overrides[key] = yaml.safe_load(value)
    return overrides


def resolve_model(name: str, **overrides: Any) -> ViTConfig:
    """An architecture by name: a model preset, a run preset's model (resolved without looking at its data), or
    the model of a checkpoint file; ``overrides`` change its fields (checked like flags)."""
    if name in RUN_PRESETS:
        cfg = resolve_config(name, facts=False).model
    elif Path(name).exists():
        from vitlab.training.checkpoint import read_checkpoint_info  # a checkpoint: only when one is named

        cfg = ViTConfig(**read_checkpoint_info(name)["model"])
    else:
        try:
            cfg = model_config(name)
        except KeyError as exc:
            raise ConfigError(f"{name!r} is neither a preset nor a checkpoint file: {exc.args[0]}; run presets: "
                              f"{', '.join(RUN_PRESETS)}") from None
    try:
        return replace(cfg, **overrides)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"{name} with {overrides}: {exc}") from None


# ----------------------------------------------------------------------------- layers


def _layers(config) -> list[tuple[Mapping, str]]:
    if config is None:
        return []
    if isinstance(config, Mapping):
        return [(config, "config")]
    paths = [config] if isinstance(config, (str, Path)) else list(config)
    layers = []
    for path in paths:
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"config file {path} (--config) does not exist")
        try:
            layers.append((yaml.safe_load(path.read_text()) or {}, str(path)))
        except yaml.YAMLError as exc:
            raise ConfigError(f"config file {path} is not valid YAML: {exc}") from exc
    return layers


def _sections(layer: Mapping[str, Any], where: str) -> dict[str, Any]:
    """``{"train.epochs": 3, "model": {"depth": 4}}`` -> ``{"train": {"epochs": 3}, "model": {"depth": 4}}``, names checked."""
    if not isinstance(layer, Mapping):
        raise ConfigError(f"{where}: expected sections model/data/train/finetune, got {type(layer).__name__}")
    nested: dict[str, Any] = {}
    for key, value in layer.items():
        section, _, name = str(key).partition(".")
        if key in ("preset", "arch"):
            nested[key] = value
        elif name:
            nested.setdefault(section, {})[name] = value
        elif isinstance(value, Mapping):
            for inner, inner_value in value.items():
                nested.setdefault(section, {})[inner] = inner_value
        elif value is not None or section not in SECTIONS:
            nested[section] = value
    for section, values in nested.items():
        if section in ("preset", "arch") or (section == "finetune" and values is None):
            continue
        if section not in SECTIONS or not isinstance(values, dict):
            raise ConfigError(f"{where}: unknown setting {section!r}{_did_you_mean(section, [*SECTIONS, 'preset', 'arch'])}")
        known = [f.name for f in fields(SECTIONS[section])]
        for name in values:
            if name not in known:
                raise ConfigError(f"{where}: unknown setting {section}.{name}"
                                  f"{_did_you_mean(name, known, prefix=section + '.')}")
    return nested


def _merge(*layers: Mapping[str, Any]) -> dict[str, Any]:
    merged: dict[str, Any] = {}
    for layer in layers:
        for key, value in layer.items():
            if isinstance(value, Mapping) and isinstance(merged.get(key), dict):
                merged[key] = {**merged[key], **value}
            else:
                merged[key] = dict(value) if isinstance(value, Mapping) else value
    return merged


def _dotted(nested: Mapping[str, Any]) -> set[str]:
    return {f"{k}.{inner}" if isinstance(v, Mapping) else k for k, v in nested.items()
            for inner in (v if isinstance(v, Mapping) else [None])}


def _named_preset(name: str, finetune: bool = False) -> RunConfig:
    try:
        return finetune_config(name) if finetune else run_config(name)
    except KeyError as exc:
        raise ConfigError(f"--preset: {exc.args[0]}") from None


def model_preset_settings(name: str) -> dict[str, Any]:
    """``--model NAME``: the named architecture's settings (not channels or classes: the data decides those)."""
    try:
        cfg = model_config(name).to_dict()
    except KeyError as exc:
        raise ConfigError(f"--model: {exc.args[0]}") from None
    return {key: cfg[key] for key in ARCHITECTURE_KEYS}


# ----------------------------------------------------------------------------- what the weights and the data decide


def _from_weights(d: dict[str, Any], explicit: set[str]) -> None:
    """Fine-tuning: the architecture and the preprocessing are the weights' (the head follows the data)."""
    from vitlab.pretrained.load import WeightsError, pretrained_config

    ft = d["finetune"]
    try:
        model, prep = pretrained_config(ft["pretrained"], file=ft.get("pretrained_file"), img_size=ft.get("img_size"),
                                        drop_path_rate=ft.get("drop_path_rate", 0.0))
    except (WeightsError, KeyError) as exc:
        raise ConfigError(f"--pretrained {ft['pretrained']}: {exc.args[0] if exc.args else exc}") from exc
    d["model"] = model.to_dict()
    data = d["data"]
    if data.get("mean") is None and data.get("std") is None:  # unless given (a RunConfig marks every field explicit)
        data["mean"], data["std"] = list(prep.mean), list(prep.std)
    for key, value in (("interpolation", prep.interpolation), ("crop_pct", round(prep.crop_pct, 4)),
                       ("crop_mode", prep.crop_mode)):
        if f"data.{key}" not in explicit:
            data[key] = value
    if "data.augment" not in explicit:
        linear = d["finetune"].get("mode") == "linear"
        data["augment"] = "none" if linear else FINETUNE_AUGMENT.get(str(data["dataset"]), "crop_flip")


def _tailored(base: RunConfig, merged: dict[str, Any], finetune: bool, given: bool) -> bool:
    """Whether the base configuration was made for this very data set (then its input size is kept)."""
    return finetune or given or (base.data.dataset == merged["data"]["dataset"] and base.data.dataset in BUILTIN_FACTS)


def _from_data(d: dict[str, Any], explicit: set[str], tailored: bool, preset_size: tuple[int, int]) -> None:
    """Classes always from the data; channels, input size, patch size and augmentation too for a preset made for other
    data (the preset's patch size stays where the input size is still the preset's)."""
    facts = _probe(d["data"])
    model = d["model"]
    if facts.num_classes is not None:
        if "model.num_classes" in explicit and model["num_classes"] != facts.num_classes:
            raise ConfigError(f"--model.num_classes {model['num_classes']}: the data has {facts.num_classes} classes; drop "
                              "the flag (the head always follows the data)")
        model["num_classes"] = facts.num_classes
    if tailored:
        return
    if "model.in_chans" not in explicit and facts.channels is not None:
        model["in_chans"] = facts.channels
    if "model.img_size" not in explicit and facts.image_size is not None:
        model["img_size"] = image_size_for(facts.image_size)
    size, patch = _pair(model["img_size"]), _pair(model["patch_size"])
    fits = all(s % p == 0 for s, p in zip(size, patch))
    if "model.patch_size" not in explicit and (size != _pair(preset_size) or not fits):  # same size: the preset's patch stays
        model["patch_size"] = patch_size_for(model["img_size"], power_of_two=model.get("patch_embed") == "conv_stem")
    if "data.augment" not in explicit:
        d["data"]["augment"] = facts.augment


def _pair(value) -> tuple[int, int]:
    return (int(value), int(value)) if isinstance(value, (int, float)) else (int(value[0]), int(value[1]))


def _probe(data: dict[str, Any]) -> DataFacts:
    try:
        return probe_data(DataConfig(**data))
    except FileNotFoundError:
        raise
    except (ValueError, OSError) as exc:
        raise ConfigError(str(exc)) from exc


def image_size_for(size: tuple[int, int]) -> int:
    """A square input size for images of ``size``: 64 for photos of 64 px and more (a CPU-sized default),
    32 from 32 px, else the shorter side rounded down to a multiple of 4."""
    short = min(size)
    return 64 if short >= 64 else 32 if short >= 32 else max(4, short - short % 4)


def patch_size_for(img_size, power_of_two: bool = False) -> int:
    """The patch size that cuts ``img_size`` into about 8 x 8 patches (a power of two for a conv stem)."""
    side = min(img_size) if isinstance(img_size, (list, tuple)) else int(img_size)
    sides = img_size if isinstance(img_size, (list, tuple)) else (side, side)
    fits = [p for p in range(1, side + 1) if all(s % p == 0 for s in sides) and (not power_of_two or p & (p - 1) == 0)]
    fits = [p for p in fits if p >= 2] or fits
    return min(fits, key=lambda p: (abs(math.log(side / p / 8)), -p))


# ----------------------------------------------------------------------------- building and checking


def _build(d: dict[str, Any]) -> RunConfig:
    """The frozen RunConfig of a nested dict; a field the dataclasses refuse becomes a ConfigError naming its flag."""
    for section in ("model", "data", "train", "finetune"):
        if d.get(section) is None:
            continue
        cls = SECTIONS[section]
        try:
            cls(**d[section])
        except (ValueError, TypeError) as exc:
            raise ConfigError(f"{_flags_in(str(exc), section) or '--' + section}: {exc}") from None
    return RunConfig.from_dict(d)


def _flags_in(message: str, section: str) -> str:
    names = [f.name for f in fields(SECTIONS[section]) if f.name in message]
    return ", ".join(f"--{section}.{n}" for n in names)


def check_config(cfg: RunConfig) -> RunConfig:
    """``cfg`` if every value can work, else one ConfigError listing each problem with its flag and the fix."""
    t, d, ft = cfg.train, cfg.data, cfg.finetune
    rules: list[tuple[bool, str]] = [
        (isinstance(t.epochs, int) and t.epochs >= 1, f"--train.epochs must be at least 1, got {t.epochs}"),
        (t.batch_size >= 1, f"--train.batch_size must be at least 1, got {t.batch_size}"),
        (t.eval_batch_size >= 1, f"--train.eval_batch_size must be at least 1, got {t.eval_batch_size}"),
        (t.eval_every >= 1, f"--train.eval_every must be at least 1 (validate after every N-th epoch), got {t.eval_every}"),
        (t.lr > 0 and math.isfinite(t.lr), f"--train.lr must be a positive number, got {t.lr}"),
        (0 <= t.min_lr <= t.lr, f"--train.min_lr must be between 0 and --train.lr ({t.lr}), got {t.min_lr}"),
        (t.weight_decay >= 0, f"--train.weight_decay must be >= 0, got {t.weight_decay}"),
        (all(0 <= b < 1 for b in t.betas) and len(t.betas) == 2, f"--train.betas must be two numbers in [0, 1), got {t.betas}"),
        (t.warmup_epochs >= 0, f"--train.warmup_epochs must be >= 0, got {t.warmup_epochs}"),
        (0 <= t.label_smoothing < 1, f"--train.label_smoothing must be in [0, 1), got {t.label_smoothing}"),
        (t.grad_clip >= 0, f"--train.grad_clip must be >= 0 (0: off), got {t.grad_clip}"),
        (0 <= t.ema_decay < 1, f"--train.ema_decay must be in [0, 1) (0: off; e.g. 0.9995), got {t.ema_decay}"),
        (t.time_budget_s is None or t.time_budget_s > 0,
         f"--train.time_budget_s must be a positive number of seconds (or null), got {t.time_budget_s}"),
        *progressive_rules(cfg),
        (t.threads is None or t.threads >= 1, f"--train.threads must be at least 1 (or null), got {t.threads}"),
        (d.train_subset is None or d.train_subset >= 1, f"--data.train_subset must be at least 1 (or null), got {d.train_subset}"),
        (d.val_subset is None or d.val_subset >= 1, f"--data.val_subset must be at least 1 (or null), got {d.val_subset}"),
        (0 <= d.val_fraction < 1, f"--data.val_fraction must be in [0, 1), got {d.val_fraction}"),
        (0 <= d.random_erasing <= 1, f"--data.random_erasing is a probability in [0, 1], got {d.random_erasing}"),
        (d.num_workers >= 0, f"--data.num_workers must be >= 0, got {d.num_workers}"),
        (d.max_cache_gib > 0, f"--data.max_cache_gib must be positive, got {d.max_cache_gib}"),
        (d.shuffle_buffer > 0, f"--data.shuffle_buffer must be positive, got {d.shuffle_buffer}"),
        (0 < d.crop_pct <= 1, f"--data.crop_pct must be in (0, 1], got {d.crop_pct}"),
        (d.std is None or all(s > 0 for s in d.std), f"--data.std must be positive, got {d.std}"),
        (d.dataset != "imagefolder" or bool(d.path), "--data.dataset imagefolder needs --data.path DIR (class folders, "
                                                     "or train/ and val/ holding class folders)"),
    ]
    for name, values in (("mean", d.mean), ("std", d.std)):
        rules.append((values is None or len(values) in (1, cfg.model.in_chans),
                      f"--data.{name} has {len(values or ())} values but the model reads {cfg.model.in_chans} channels"))
    if ft is not None:
        rules += [
            (ft.head_epochs >= 0, f"--finetune.head_epochs must be >= 0, got {ft.head_epochs}"),
            (ft.backbone_lr_scale > 0, f"--finetune.backbone_lr_scale must be positive, got {ft.backbone_lr_scale}"),
            (0 < ft.layer_decay <= 1, f"--finetune.layer_decay must be in (0, 1] (1: off), got {ft.layer_decay}"),
            (ft.img_size is None or ft.img_size >= 1, f"--finetune.img_size must be positive, got {ft.img_size}"),
            (cfg.arch == "vit", f"fine-tuning starts from pretrained ViT weights; it cannot train --arch {cfg.arch}"),
        ]
    problems = [message for ok, message in rules if not ok]
    if (device := device_problem(t.device)) is not None:
        problems.append(device)
    if problems:
        raise ConfigError("; ".join(problems))
    return cfg


def progressive_rules(cfg: RunConfig) -> list[tuple[bool, str]]:
    """What ``--train.progressive_res`` needs: a square model that takes other sizes, a smaller start in whole patches,
    and epochs at full size after the ramp."""
    t, m = cfg.train, cfg.model
    if t.progressive_res == 0:  # off: its other settings are not used
        return []
    side, patch = m.img_size[0], m.patch_size[0]
    return [
        (cfg.arch == "vit" and m.dynamic_img_size, "--train.progressive_res trains on smaller images, which a ViT "
                                                   "takes only with --model.dynamic_img_size true"),
        (m.img_size[0] == m.img_size[1] and m.patch_size[0] == m.patch_size[1],
         f"--train.progressive_res needs a square img_size and patch_size, got {m.img_size} and {m.patch_size}"),
        (patch <= t.progressive_res < side and t.progressive_res % patch == 0,
         f"--train.progressive_res must be a multiple of the patch size {patch} below img_size {side} "
         f"(e.g. {max(patch, side * 3 // 4 // patch * patch)}), got {t.progressive_res}"),
        (not cfg.uses_feature_cache, "--train.progressive_res cannot train on cached features; "
                                     "set --finetune.cache_features false"),
        (1 <= t.progressive_epochs < t.epochs, f"--train.progressive_epochs must be at least 1 and below --train.epochs "
                                               f"({t.epochs}), got {t.progressive_epochs} (or turn progressive resizing "
                                               "off: --train.progressive_res 0)"),
        (0 < t.progressive_lr_scale <= 1, f"--train.progressive_lr_scale must be in (0, 1], got {t.progressive_lr_scale}"),
    ]


def device_problem(name: str) -> str | None:
    """Why ``--train.device NAME`` cannot be used here, or None."""
    if name == "auto":
        return None
    try:
        device = torch.device(name)
    except (RuntimeError, ValueError):
        return f"--train.device {name!r} is not a device name; use auto, cpu, cuda, cuda:N or mps"
    if device.type == "cuda" and not torch.cuda.is_available():
        return f"--train.device {name}: this machine has no CUDA device; use --train.device cpu (or auto)"
    if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
        return f"--train.device {name}: there are only {torch.cuda.device_count()} CUDA devices"
    if device.type == "mps" and not torch.backends.mps.is_available():
        return f"--train.device {name}: MPS is not available here; use --train.device cpu (or auto)"
    if device.type not in ("cpu", "cuda", "mps"):
        return f"--train.device {name}: vitlab trains on cpu, cuda or mps"
    return None


def _did_you_mean(name: str, choices: Sequence[str], prefix: str = "") -> str:
    hint = did_you_mean(name, choices, prefix, cutoff=0.6)
    return f"; {hint.strip()}" if hint else ""
