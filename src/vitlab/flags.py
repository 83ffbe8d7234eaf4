"""Command-line flags of ``vitlab train`` and ``vitlab finetune``, turned into what the user asked for.

jsonargparse reads the flags and ``--config`` YAML files into sections (``--model.*``, ``--data.*``,
``--train.*``, ``--finetune.*``) with the dataclasses' types and their attribute docstrings as
``--help``; only the values the user gave go on to :func:`vitlab.resolve.resolve_config`, which
fills in the rest. The spellings people bring from timm and Lightning (``--epochs``, ``--lr``,
``--batch-size``, ``--model NAME``, ``--data-dir``, ``--output``) are accepted as aliases, and an
unknown flag gets one line naming the closest real one.
"""

from __future__ import annotations

import argparse
import difflib
from dataclasses import asdict
from pathlib import Path
from typing import Any

import yaml
from jsonargparse import ActionConfigFile, ArgumentParser, Namespace, set_parsing_settings

from vitlab.baselines import ARCHITECTURES
from vitlab.config import DataConfig, FinetuneConfig, RunConfig, TrainConfig
from vitlab.model import ViTConfig
from vitlab.presets import FINETUNE_BASE, FINETUNE_DEFAULT, FINETUNE_PRESETS, RUN_PRESETS, run_config
from vitlab.resolve import DEFAULT_PRESET, ConfigError, model_preset_settings, preset_name, resolve_config

set_parsing_settings(docstring_parse_attribute_docstrings=True)  # the dataclasses' attribute docstrings are --help

ALIASES = {
    "--epochs": "--train.epochs", "--max_epochs": "--train.epochs", "--max-epochs": "--train.epochs",
    "--lr": "--train.lr", "--learning_rate": "--train.lr", "--learning-rate": "--train.lr",
    "--batch-size": "--train.batch_size", "--batch_size": "--train.batch_size", "-b": "--train.batch_size",
    "--weight-decay": "--train.weight_decay", "--weight_decay": "--train.weight_decay", "--wd": "--train.weight_decay",
    "--min-lr": "--train.min_lr", "--warmup-epochs": "--train.warmup_epochs", "--smoothing": "--train.label_smoothing",
    "--opt": "--train.optimizer", "--sched": "--train.schedule", "--clip-grad": "--train.grad_clip",
    "--model-ema-decay": "--train.ema_decay", "--seed": "--train.seed", "--device": "--train.device",
    "--threads": "--train.threads",
    "--data-dir": "--data.data_dir", "--data_dir": "--data.data_dir", "--data-path": "--data.path",
    "--data_path": "--data.path", "--workers": "--data.num_workers", "-j": "--data.num_workers",
    "--num-workers": "--data.num_workers", "--reprob": "--data.random_erasing",
    "--img-size": "--model.img_size", "--img_size": "--model.img_size", "--patch-size": "--model.patch_size",
    "--drop-path": "--model.drop_path_rate", "--drop": "--model.drop_rate",
    "--output": "--run_dir", "--output-dir": "--run_dir", "--output_dir": "--run_dir", "--default_root_dir": "--run_dir",
}
TRAIN_ONLY_ALIASES = {"--dataset": "--data.dataset"}  # vitlab finetune has its own --dataset


def train_parser(preset: str = DEFAULT_PRESET) -> ArgumentParser:
    """``vitlab train``'s flags, with ``preset``'s values as the defaults ``--help`` shows."""
    parser = ArgumentParser(prog="vitlab train", default_env=False, description=(
        "Train a ViT from scratch. Defaults come from the preset (else one that suits the data set: mnist, cifar10, ... "
        "or photos for image folders); YAML files and flags override them; what the data decides (classes, channels, "
        "and for a preset made for other data the input size and augmentation) follows the data unless set. Aliases: "
        + ", ".join(sorted({**ALIASES, **TRAIN_ONLY_ALIASES})) + "; --model NAME takes a model preset's architecture."))
    parser.add_argument("--config", action=ActionConfigFile, help="YAML file(s) with model/data/train sections")
    parser.add_argument("--preset", default=None,
                        help=f"training recipe giving the defaults: {', '.join(RUN_PRESETS)} (`vitlab presets`); "
                             f"default {DEFAULT_PRESET}, or the one named after the data set, or photos for image "
                             "folders and hf: sources")
    _add_run_options(parser)
    parser.add_argument("--arch", default="vit", choices=list(ARCHITECTURES),
                        help="vit, or a convolutional baseline trained the same way (cnn, resnet18); "
                             "baselines take the input size, channels and classes from --model")
    _add_sections(parser, run_config(preset), ("model", "data", "train"))
    return parser


def finetune_parser() -> ArgumentParser:
    parser = ArgumentParser(prog="vitlab finetune", default_env=False, description=(
        "Fine-tune pretrained weights (timm, torchvision, Hugging Face, Google .npz) on a data set: a new "
        "zero-initialised head; the weights' architecture and preprocessing; linear probe, staged or full."))
    parser.add_argument("--config", action=ActionConfigFile, help="YAML file(s) with data/train/finetune sections")
    parser.add_argument("--preset", default=None, choices=sorted(FINETUNE_PRESETS),
                        help=f"fine-tuning recipe (default {FINETUNE_DEFAULT}: 5 epochs on CIFAR-10 from ViT-Ti/16; "
                             "scenes: staged with layer decay for photos of scenes)")
    parser.add_argument("--pretrained", default=None, help="registry name (`vitlab weights`) or weights file "
                                                           "(the same as --finetune.pretrained)")
    parser.add_argument("--dataset", default=None, help="mnist, fashion_mnist, cifar10, cifar100, imagefolder or hf:NAME "
                                                        "(the same as --data.dataset)")
    parser.add_argument("--mode", default=None, choices=["linear", "staged", "full"],
                        help="what to train (the same as --finetune.mode)")
    _add_run_options(parser)
    _add_sections(parser, FINETUNE_BASE, ("finetune", "data", "train"))
    return parser


def _add_run_options(parser: ArgumentParser) -> None:
    parser.add_argument("--run_dir", "--run-dir", default=None,
                        help="where the run is written (default runs/PRESET-TIMESTAMP); never overwritten")
    parser.add_argument("--resume", default=None, help="continue the run in this directory after a kill (alone, or "
                                                       "with --train.epochs N to train a finished run longer)")
    parser.add_argument("--quiet", action="store_true", help="no progress bars or epoch lines")


def _add_sections(parser: ArgumentParser, base: RunConfig, sections: tuple[str, ...]) -> None:
    classes = {"model": ViTConfig, "data": DataConfig, "train": TrainConfig, "finetune": FinetuneConfig}
    defaults = {}
    for section in sections:
        parser.add_class_arguments(classes[section], section)
        values = getattr(base, section).to_dict() if section == "model" else asdict(getattr(base, section))
        defaults.update({f"{section}.{key}": value for key, value in values.items()})
    parser.set_defaults(defaults)


# ----------------------------------------------------------------------------- argv -> RunConfig


def parse_train_flags(argv: list[str], strict: bool = False, facts: bool = True) -> tuple[Namespace, RunConfig]:
    """The parsed ``vitlab train`` flags and the resolved run they describe. ``strict``: raise instead of
    printing usage and exiting on a flag jsonargparse refuses (what ``vitlab sweep`` uses to check every trial);
    ``facts=False``: without looking at the data."""
    argv, model_name = _expand(argv, {**ALIASES, **TRAIN_ONLY_ALIASES})
    parser = train_parser(_peek_preset(argv))
    args, given = _parse(parser, argv, strict)
    if model_name is not None:
        given["model"] = {**model_preset_settings(model_name), **given.get("model", {})}
    args.preset = preset_name(None, given)
    if args.resume:
        return args, RunConfig()  # the run's own config.yaml decides; see vitlab.training.train(resume=True)
    return args, resolve_config(args.preset, overrides=given, facts=facts)


def parse_finetune_flags(argv: list[str]) -> tuple[Namespace, RunConfig]:
    """The parsed ``vitlab finetune`` flags and the resolved run (the weights decide the model)."""
    argv, model_name = _expand(argv, ALIASES)
    if model_name is not None:
        raise ConfigError("vitlab finetune takes its architecture from the weights: use --pretrained NAME "
                          "(`vitlab weights` lists them) instead of --model")
    args, given = _parse(finetune_parser(), argv, strict=False)
    shortcuts = {"pretrained": ("finetune", "pretrained"), "dataset": ("data", "dataset"), "mode": ("finetune", "mode")}
    for flag, (section, key) in shortcuts.items():
        if given.get(flag) is not None:
            given.setdefault(section, {})[key] = given.pop(flag)
    if args.resume:
        return args, RunConfig()
    return args, resolve_config(given.pop("preset", None), finetune=True, overrides=given)


def _parse(parser: ArgumentParser, argv: list[str], strict: bool) -> tuple[Namespace, dict[str, Any]]:
    """(every option with its default, only what the user gave: flags and --config files)."""
    _refuse_unknown(parser, argv)
    if strict:
        parser.exit_on_error = False  # raise instead of printing usage and exiting
    args = parser.parse_args(argv)
    given = parser.parse_args(argv, defaults=False).as_dict()
    for key in ("config", "run_dir", "resume", "quiet", "__path__"):
        given.pop(key, None)
    return args, {k: v for k, v in given.items() if v is not None}


def _expand(argv: list[str], aliases: dict[str, str]) -> tuple[list[str], str | None]:
    """``argv`` with aliases spelled out, and the model preset that ``--model NAME`` names (or None)."""
    out, model_name, i = [], None, 0
    while i < len(argv):
        flag, eq, value = argv[i].partition("=")
        if flag == "--model" and (eq or i + 1 < len(argv)):
            name = value if eq else argv[i + 1]
            if not name.lstrip().startswith(("{", "[")) and Path(name).suffix not in (".yaml", ".yml", ".json"):
                model_name, i = name, i + (1 if eq else 2)
                continue
        out.append(aliases.get(flag, flag) + eq + value if flag in aliases else argv[i])
        i += 1
    return out, model_name


def _refuse_unknown(parser: ArgumentParser, argv: list[str]) -> None:
    known = list(parser._option_string_actions)
    for token in argv:
        flag = token.partition("=")[0]
        if flag.startswith("-") and not _is_number(flag) and flag not in known:
            raise ConfigError(f"unknown option {flag}{suggest_flag(flag, known)} `{parser.prog} --help` lists them all")


def suggest_flag(flag: str, known: list[str]) -> str:
    """"; did you mean --train.epochs?" for the closest real flag, by whole name, by its last part, or by an alias."""
    bare = flag.lstrip("-").replace("-", "_")
    by_last = {k.rsplit(".", 1)[-1].lstrip("-"): k for k in known if "." in k}
    by_last.update({alias.lstrip("-").replace("-", "_"): target for alias, target in ALIASES.items() if target in known})
    close = difflib.get_close_matches(bare, list(by_last), n=1, cutoff=0.75)
    if close:
        return f"; did you mean {by_last[close[0]]}?"
    close = difflib.get_close_matches(flag, known, n=1, cutoff=0.6)
    return f"; did you mean {close[0]}?" if close else ";"


def _is_number(token: str) -> bool:
    try:
        float(token)
        return True
    except ValueError:
        return False


def _peek_preset(argv: list[str]) -> str:
    """The preset named on the command line or in a --config file (its values are the defaults --help shows)."""
    peek = argparse.ArgumentParser(add_help=False)
    peek.add_argument("--preset")
    peek.add_argument("--config", action="append", default=[])
    known, _ = peek.parse_known_args(argv)
    preset = known.preset
    for path in known.config:
        if preset is None and Path(path).is_file():
            preset = (yaml.safe_load(Path(path).read_text()) or {}).get("preset")
    return preset if preset in RUN_PRESETS else DEFAULT_PRESET


def given_flags(argv: list[str]) -> list[str]:
    """The flags on a command line, aliases spelled out (``--epochs=3`` -> ``--train.epochs``)."""
    return [ALIASES.get(a.split("=")[0], a.split("=")[0]) for a in argv if a.startswith("-")]


def budget_overrides_epochs(argv: list[str], cfg: RunConfig) -> str | None:
    """A note for ``--train.epochs N`` given while the run has a time budget, which plans the epochs instead."""
    flags = given_flags(argv)
    if "--train.epochs" not in flags or cfg.train.time_budget_s is None:
        return None
    source = "--train.time_budget_s" if "--train.time_budget_s" in flags else "the preset or config file"
    return (f"note: a time budget of {cfg.train.time_budget_s:g} s (from {source}) plans the number of epochs after the "
            f"first one, so --train.epochs {cfg.train.epochs} is not what will run; add --train.time_budget_s null to "
            f"train exactly {cfg.train.epochs} epochs")
