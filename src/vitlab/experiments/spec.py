"""The sweep file: a base training configuration, the settings to vary, and the seeds.

    name: mnist-patch-size          # names the output folder, sweeps/NAME (default: the file's name)
    description: patch size on MNIST, 2 epochs    # optional, shown in results.md
    base:                           # what `vitlab train --config FILE` accepts (or the path of such a file)
      preset: mnist
      train: {epochs: 2}
      data: {train_subset: 10000}
    grid:                           # every combination of these values
      model.patch_size: [2, 4, 7, 14]
    points:                         # and/or hand-picked configurations, each combined with every grid combination
      - {label: small, model.embed_dim: 32, model.num_heads: 2}
      - {label: default}
    seeds: [0, 1]                   # each configuration is trained once per seed (sets train.seed)

Settings are ``vitlab train`` flags without the dashes: ``preset``, ``model.*``, ``data.*``, ``train.*``.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from vitlab.experiments.keys import SECTIONS, TOP_LEVEL, check_setting, flatten, format_value, short_names

SWEEP_FIELDS = ("name", "description", "base", "grid", "points", "seeds")
NAME_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")
MAX_SLUG = 80


@dataclass(frozen=True)
class Configuration:
    """One point of the sweep: the settings it changes from the base, in sweep-file order."""

    slug: str
    name: str
    overrides: dict[str, Any]
    label: str | None = None


@dataclass(frozen=True)
class Trial:
    """A configuration trained with one seed: one run directory."""

    configuration: Configuration
    seed: int

    @property
    def slug(self) -> str:
        return f"{self.configuration.slug}-seed{self.seed}"

    def flags(self) -> list[str]:
        """The ``vitlab train`` flags that turn the base configuration into this trial."""
        return [*(f"--{key}={cli_value(value)}" for key, value in self.configuration.overrides.items()),
                f"--train.seed={self.seed}"]


@dataclass
class SweepSpec:
    """A parsed, checked sweep file."""

    name: str
    base: dict[str, Any]
    grid: dict[str, list[Any]] = field(default_factory=dict)
    points: list[dict[str, Any]] = field(default_factory=list)
    seeds: list[int] = field(default_factory=lambda: [0])
    description: str = ""
    source: Path | None = None

    @classmethod
    def load(cls, path: str | Path) -> SweepSpec:
        """Read and check a sweep file; every problem is a ValueError that names it."""
        path = Path(path)
        return cls.from_dict(_read_yaml(path, f"sweep file {path}"), path)

    @classmethod
    def from_dict(cls, raw: Any, path: Path) -> SweepSpec:
        where = f"sweep file {path}"
        if not isinstance(raw, dict):
            raise ValueError(f"{where} must be a mapping with the fields {', '.join(SWEEP_FIELDS)} (see `vitlab sweep --help`)")
        unknown = sorted(set(raw) - set(SWEEP_FIELDS))
        if unknown:
            raise ValueError(f"{where}: unknown field(s) {unknown}; a sweep file has {', '.join(SWEEP_FIELDS)}")
        name = str(raw.get("name") or path.stem)
        if not NAME_PATTERN.fullmatch(name):
            raise ValueError(f"{where}: name {name!r} must be a folder name (letters, digits, '.', '_', '-')")
        spec = cls(name=name, base=_load_base(raw.get("base"), path), grid=_check_grid(raw.get("grid"), where),
                   points=_check_points(raw.get("points"), where), description=str(raw.get("description") or ""),
                   source=path)
        spec.seeds = _check_seeds(raw.get("seeds"), spec.base, where)
        both = sorted({key for point in spec.points for key in point} & set(spec.grid))
        if both:
            raise ValueError(f"{where}: {both} are set both by points and by the grid; vary each setting in one place")
        spec.configurations()  # slugs must be distinct
        return spec

    @property
    def swept_keys(self) -> list[str]:
        """The settings the sweep varies, in the order they first appear in the file."""
        keys = [key for point in self.points for key in point if key != "label"] + list(self.grid)
        return list(dict.fromkeys(keys))

    def configurations(self) -> list[Configuration]:
        """Every point combined with every grid combination, in sweep order."""
        short = short_names(self.swept_keys)
        combos = [dict(zip(self.grid, values)) for values in itertools.product(*self.grid.values())]
        configurations: list[Configuration] = []
        seen: dict[str, dict[str, Any]] = {}
        for point in self.points or [{}]:
            label = point.get("label")
            own = {k: v for k, v in point.items() if k != "label"}
            for combo in combos:
                overrides = {**own, **combo}
                shown = combo if label else overrides  # a labelled point is named by its label
                slug = _slug([label] if label else [], [f"{short[k]}={_slug_value(v)}" for k, v in shown.items()])
                name = ", ".join([*([label] if label else []), *(f"{short[k]}={format_value(v)}" for k, v in shown.items())])
                if slug in seen:
                    raise ValueError(f"sweep {self.name}: configurations {seen[slug]} and {overrides} both get the run name "
                                     f"{slug!r}; give the points distinct `label`s")
                seen[slug] = overrides
                configurations.append(Configuration(slug, name or "base", overrides, label))
        return configurations

    def trials(self) -> list[Trial]:
        """Every configuration once per seed: all configurations for the first seed first."""
        configurations = self.configurations()
        return [Trial(configuration, seed) for seed in self.seeds for configuration in configurations]


def cli_value(value: Any) -> str:
    """A value as a ``vitlab train`` flag reads it (YAML/JSON syntax for anything but plain strings)."""
    return value if isinstance(value, str) else json.dumps(value)


def _read_yaml(file: Path, what: str) -> Any:
    if not file.is_file():
        raise FileNotFoundError(f"{what} does not exist")
    try:
        return yaml.safe_load(file.read_text())
    except yaml.YAMLError as exc:
        raise ValueError(f"{what} is not valid YAML: {exc}") from None


def _load_base(base: Any, sweep_file: Path) -> dict[str, Any]:
    where = f"sweep file {sweep_file}: base"
    if isinstance(base, str):  # the path of a `vitlab train --config` file, relative to the sweep file
        file = (sweep_file.parent / base) if not Path(base).is_absolute() else Path(base)
        where = f"{where} file {file}"
        base = _read_yaml(file, where)
    base = {} if base is None else base
    if not isinstance(base, dict):
        raise ValueError(f"{where} must be a mapping like a `vitlab train --config` file: preset, model, data, train, ...")
    for key, value in base.items():
        if key in SECTIONS and not isinstance(value, dict):
            raise ValueError(f"{where}: {key} must be a mapping of settings, e.g. {key}: {{...}}")
        if key not in SECTIONS and key not in TOP_LEVEL:
            raise ValueError(f"{where}: unknown field {key!r}; a training config has {', '.join(TOP_LEVEL)}, model, data and train")
    for key in flatten(base):
        if key != "train.seed":  # the base may set the seed; `seeds:` overrides it
            check_setting(key, where)
    return base


def _check_grid(grid: Any, where: str) -> dict[str, list[Any]]:
    if grid is None:
        return {}
    if not isinstance(grid, dict):
        raise ValueError(f"{where}: grid must map settings to lists of values, e.g. `model.depth: [2, 4]`")
    for key, values in grid.items():
        check_setting(key, f"{where}: grid")
        if not isinstance(values, list) or not values:
            raise ValueError(f"{where}: grid values must be a non-empty list; write `{key}: [{format_value(values)}]`, "
                             f"not `{key}: {values!r}`")
    return grid


def _check_points(points: Any, where: str) -> list[dict[str, Any]]:
    if points is None:
        return []
    if not isinstance(points, list) or not all(isinstance(p, dict) for p in points) or not points:
        raise ValueError(f"{where}: points must be a list of mappings, e.g. `- {{label: wide, model.embed_dim: 128}}`")
    for i, point in enumerate(points):
        for key in point:
            if key != "label":
                check_setting(key, f"{where}: points[{i}]")
        if "label" in point and not (isinstance(point["label"], str) and point["label"].strip()):
            raise ValueError(f"{where}: points[{i}] label must be a non-empty string")
    labels = [p["label"] for p in points if "label" in p]
    if len(labels) != len(set(labels)):
        raise ValueError(f"{where}: point labels must be distinct; got {labels}")
    return points


def _check_seeds(seeds: Any, base: dict[str, Any], where: str) -> list[int]:
    if seeds is None:
        return [int(base.get("train", {}).get("seed", 0))]
    if not isinstance(seeds, list) or not seeds or not all(isinstance(s, int) and not isinstance(s, bool) for s in seeds):
        raise ValueError(f"{where}: seeds must be a non-empty list of integers, e.g. `seeds: [0, 1, 2]`")
    if len(set(seeds)) != len(seeds):
        raise ValueError(f"{where}: seeds {seeds} repeat a seed; each seed trains the same run again")
    return seeds


def _slug_value(value: Any) -> str:
    """A value for a folder name: a path by its last part (``data/mnist`` -> ``mnist``)."""
    text = format_value(value)
    return Path(text).name or text if isinstance(value, str) and "/" in text else text


def _slug(labels: list[str], parts: list[str]) -> str:
    """A readable folder name: ``patch_size=4-depth=2`` (long names end in a short hash)."""
    text = "-".join([*labels, *parts]) or "base"
    slug = re.sub(r"[^A-Za-z0-9._=+-]+", "_", text).strip("._") or "config"
    if len(slug) > MAX_SLUG:
        slug = f"{slug[:MAX_SLUG - 9]}~{hashlib.sha1(text.encode()).hexdigest()[:8]}"
    return slug
