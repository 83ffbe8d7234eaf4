"""Results of several runs side by side: read from run directories, grouped over seeds, as tables and plots.

Used by ``vitlab sweep`` (the swept settings) and ``vitlab compare`` (the settings that differ
between hand-picked runs). Everything is rebuilt from the run directories each time:
``results.csv`` (one row per run), ``results.md`` (one row per configuration, mean ± std
over seeds), ``accuracy_vs_SETTING.png`` and ``accuracy_vs_time.png``.
"""

from __future__ import annotations

import csv
import io
import json
import os
import platform
import statistics
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from matplotlib.figure import Figure

from vitlab.atomic import atomic_write_text
from vitlab.experiments.keys import RUNTIME_KEYS, SEED_KEY, flatten, format_value, short_names
from vitlab.insight.plots import save_figure
from vitlab.training.rundir import CONFIG_FILE, METRICS_FILE


@dataclass
class RunResult:
    """One run directory's configuration and numbers; ``values`` holds the settings it is compared on."""

    run_dir: Path
    config: dict[str, Any]
    history: list[dict[str, Any]]
    params: int | None = None
    flops: int | None = None
    values: dict[str, Any] = field(default_factory=dict)
    label: str | None = None
    name: str | None = None
    """A short name for plots (default: the label, else the values)."""

    @property
    def seed(self) -> int:
        return self.config.get(SEED_KEY, 0)

    @property
    def epochs(self) -> int:
        return len(self.history)

    @property
    def final_acc(self) -> float:
        return self.history[-1]["val_acc"]

    @property
    def best_acc(self) -> float:
        return max(h["val_acc"] for h in self.history if "val_acc" in h)  # --train.eval_every skips epochs

    @property
    def train_time_s(self) -> float:
        """Wall time of the whole run, training and validation (``elapsed_s`` after the last epoch)."""
        return self.history[-1]["elapsed_s"]

    @property
    def images_per_s(self) -> float:
        """Mean training throughput over the epochs."""
        return statistics.mean(h["train_images_per_s"] for h in self.history)


def load_run(run_dir: str | Path) -> RunResult:
    """Read a run directory written by ``vitlab train``: config.yaml, metrics.jsonl and last.json."""
    run_dir = Path(run_dir)
    if not (run_dir / CONFIG_FILE).is_file():
        raise FileNotFoundError(f"{run_dir} is not a vitlab run directory: it has no {CONFIG_FILE}")
    metrics = run_dir / METRICS_FILE
    history = [json.loads(line) for line in metrics.read_text().splitlines()] if metrics.is_file() else []
    if not history:
        raise ValueError(f"{run_dir} has no finished epoch yet (its {METRICS_FILE} is empty); train it first")
    last = run_dir / "last.json"
    info = json.loads(last.read_text()) if last.is_file() else {}
    config = flatten(yaml.safe_load((run_dir / CONFIG_FILE).read_text()) or {})
    return RunResult(run_dir, config, history, info.get("params"), info.get("flops"))


def compare_runs(run_dirs: list[str | Path], labels: list[str] | None = None) -> tuple[list[RunResult], list[str]]:
    """Read runs for ``vitlab compare``; returns them and the settings that differ between them."""
    if labels and len(labels) != len(run_dirs):
        raise ValueError(f"--labels gives {len(labels)} labels for {len(run_dirs)} run directories; give one per run")
    results = [load_run(d) for d in run_dirs]
    keys = differing_keys(results)
    for i, result in enumerate(results):
        result.values = {key: result.config.get(key) for key in keys}
        result.label = labels[i] if labels else None
    return results, keys


def differing_keys(results: list[RunResult]) -> list[str]:
    """Settings with different values between runs (leaving out the seed and :data:`RUNTIME_KEYS`)."""
    keys = dict.fromkeys(key for r in results for key in r.config)
    return [key for key in keys if key != SEED_KEY and key not in RUNTIME_KEYS
            and len({json.dumps(r.config[key]) for r in results if key in r.config}) > 1]


@dataclass
class Group:
    """Runs of one configuration (differing in the seed only)."""

    values: dict[str, Any]
    label: str | None
    name: str
    runs: list[RunResult]

    def mean(self, metric: str) -> float:
        return statistics.mean(getattr(r, metric) for r in self.runs)

    def std(self, metric: str) -> float:
        return statistics.stdev(getattr(r, metric) for r in self.runs) if len(self.runs) > 1 else 0.0

    def first(self, attribute: str) -> Any:
        return next((getattr(r, attribute) for r in self.runs if getattr(r, attribute) is not None), None)


def group_results(results: list[RunResult], keys: list[str]) -> list[Group]:
    """Runs with equal ``values`` in one group, groups in the order they first appear."""
    runs_by_values: dict[str, list[RunResult]] = {}
    for result in results:
        runs_by_values.setdefault(json.dumps(result.values, sort_keys=True, default=str), []).append(result)
    short, groups = short_names(keys), []
    for runs in runs_by_values.values():
        label = " / ".join(dict.fromkeys(r.label for r in runs if r.label)) or None
        settings = ", ".join(f"{short[k]}={format_value(runs[0].values.get(k))}" for k in keys)
        groups.append(Group(runs[0].values, label, runs[0].name or label or settings or runs[0].run_dir.name, runs))
    return groups


def results_csv(results: list[RunResult], keys: list[str]) -> str:
    """One row per run: its settings, seed, accuracies, size, cost, and run directory."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    labelled = any(r.label for r in results)
    writer.writerow([*keys, *(["label"] if labelled else []), "seed", "final_val_acc", "best_val_acc", "params",
                     "flops_per_image", "train_time_s", "images_per_s", "epochs", "run_dir"])
    for r in results:
        writer.writerow([*(format_value(r.values.get(k)) for k in keys), *([r.label or ""] if labelled else []), r.seed,
                         f"{r.final_acc:.6f}", f"{r.best_acc:.6f}", r.params if r.params is not None else "",
                         r.flops if r.flops is not None else "", f"{r.train_time_s:.2f}", f"{r.images_per_s:.1f}",
                         r.epochs, r.run_dir])
    return buffer.getvalue()


def results_markdown(results: list[RunResult], keys: list[str], title: str, command: str = "",
                     total_trials: int | None = None, description: str = "") -> str:
    """A markdown table, one row per configuration: accuracy mean ± std over seeds, size and cost."""
    groups = group_results(results, keys)
    named = any(g.label for g in groups) or not keys
    short = short_names(keys)
    header = [*(["configuration"] if named else []), *(short[k] for k in keys), "val acc (%)", "best val acc (%)",
              "params", "MFLOPs/image", "train time (s)", "images/s"]
    rows = []
    for g in groups:
        params, flops = g.first("params"), g.first("flops")
        rows.append([*([g.name] if named else []), *(format_value(g.values.get(k)) for k in keys),
                     _mean_std(g, "final_acc", 100), _mean_std(g, "best_acc", 100),
                     f"{params:,}" if params is not None else "", f"{flops / 1e6:,.2f}" if flops is not None else "",
                     f"{g.mean('train_time_s'):.1f}", f"{g.mean('images_per_s'):,.0f}"])
    finished = f"{len(results)} runs" if total_trials is None else f"{len(results)} of {total_trials} trials finished"
    align = ["---"] * (len(header) - 6) + ["---:"] * 6  # numbers to the right
    lines = [f"# {title}", "", *([description.strip(), ""] if description.strip() else []),
             f"{finished} · {hardware()}" + (f" · `{command}`" if command else ""), "",
             "| " + " | ".join(header) + " |", "|" + "|".join(align) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows] or ["", "No finished runs yet."]
    lines += ["", "Accuracy: final epoch's validation accuracy, mean ± std over seeds (n runs). Train time: the run's "
              "wall time at its last epoch; images/s: mean training throughput."]
    return "\n".join(lines) + "\n"


def _mean_std(group: Group, metric: str, scale: float) -> str:
    mean, n = scale * group.mean(metric), len(group.runs)
    return f"{mean:.2f} ± {scale * group.std(metric):.2f} (n={n})" if n > 1 else f"{mean:.2f} (n=1)"


def hardware() -> str:
    """The machine, in words: CPU model and cores, GPU, torch version."""
    import torch

    cpu = platform.processor() or platform.machine()
    if Path("/proc/cpuinfo").is_file():
        cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                    if line.startswith("model name")), cpu)
    gpu = f", GPU {torch.cuda.get_device_name(0)}" if torch.cuda.is_available() else ""
    return f"CPU {cpu} ({os.cpu_count()} cores){gpu}, torch {torch.__version__}"


def _number(value: Any) -> float | None:
    """A setting's value as a number for a numeric axis (``[4, 4]`` -> 4), or None if it is a category."""
    if isinstance(value, (list, tuple)) and value and all(v == value[0] for v in value):
        value = value[0]
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def _series(groups: list[Group], key: str, keys: list[str]) -> dict[str, list[Group]]:
    """The groups as lines along ``key``: one per combination of the other settings. Lines of one point are
    left out when there are longer ones (a one-change-at-a-time sweep: the line through the base)."""
    others = [k for k in keys if k != key]
    lines: dict[str, list[Group]] = {}
    for g in groups:
        lines.setdefault(json.dumps([g.values.get(k) for k in others], default=str), []).append(g)
    longer = [members for members in lines.values() if len({format_value(g.values.get(key)) for g in members}) > 1]
    kept = longer or list(lines.values())
    short = short_names(keys)
    varying = [k for k in others if len({format_value(g.values.get(k)) for members in kept for g in members}) > 1]
    named = {}
    for members in kept:  # named by their shared label (if any) and the settings that tell the lines apart
        labels = {g.label for g in members}
        parts = [labels.pop()] if len(labels) == 1 and None not in labels and len(kept) > 1 else []
        parts += [f"{short[k]}={format_value(members[0].values.get(k))}" for k in varying]
        named[", ".join(parts)] = members
    return named


def accuracy_vs_setting_figure(groups: list[Group], key: str, keys: list[str], title: str = "") -> Figure:
    """Accuracy (mean ± std over seeds) against one setting; one line per combination of the other settings."""
    series = _series(groups, key, keys)
    shown = [g for members in series.values() for g in members]
    numbers = [_number(g.values.get(key)) for g in shown]
    numeric = all(n is not None for n in numbers)
    categories = list(dict.fromkeys(format_value(g.values.get(key)) for g in shown))
    dodge = min(0.15, 0.6 / len(series))  # categories: series side by side, not on top of each other
    outside = len(series) > 3  # a long legend goes right of the plot
    fig = Figure(figsize=(9.0 if outside else 6.4, 4.2), layout="constrained")
    ax = fig.subplots()
    for i, (name, members) in enumerate(series.items()):
        if numeric:
            members = sorted(members, key=lambda g: _number(g.values.get(key)))
            xs = [_number(g.values.get(key)) for g in members]
        else:
            xs = [categories.index(format_value(g.values.get(key))) + (i - (len(series) - 1) / 2) * dodge for g in members]
        ax.errorbar(xs, [100 * g.mean("final_acc") for g in members], yerr=[100 * g.std("final_acc") for g in members],
                    marker="o", capsize=4, linewidth=1.5 if numeric else 0.8, label=name or None)
    if numeric:
        values = sorted(set(numbers))
        if values[0] > 0 and values[-1] / values[0] >= 100:
            ax.set_xscale("log")
        ax.set_xticks(values, [format_value(v) for v in values])
        ax.minorticks_off()
    else:
        ax.set_xticks(range(len(categories)), categories)
        ax.set_xlim(-0.5, len(categories) - 0.5)
    if outside:
        fig.legend(loc="outside right upper", fontsize=8)
    elif len(series) > 1:
        ax.legend(fontsize=8)
    ax.set_xlabel(key)
    ax.set_ylabel("validation accuracy (%)")
    ax.set_title(f"{title}: accuracy vs {short_names(keys)[key]} (mean ± std over seeds)", fontsize=10)
    ax.grid(alpha=0.3)
    return fig


def _log_axis(ax) -> None:
    """A logarithmic x axis labelled at its major ticks only (minor labels collide on short ranges)."""
    from matplotlib.ticker import NullFormatter

    ax.set_xscale("log")
    ax.xaxis.set_minor_formatter(NullFormatter())


def has_line(groups: list[Group], key: str, keys: list[str]) -> bool:
    """Whether some configurations differ in ``key`` alone (else a plot against it would only scatter points)."""
    return any(len(members) > 1 for members in _series(groups, key, keys).values())


def accuracy_vs_time_figure(groups: list[Group], title: str = "") -> Figure:
    """Each configuration as a labelled point: mean train time against mean accuracy (± std over seeds)."""
    fig = Figure(figsize=(7.2, 4.6), layout="constrained")
    ax = fig.subplots()
    times = [g.mean("train_time_s") for g in groups]
    for g in groups:
        x, y = g.mean("train_time_s"), 100 * g.mean("final_acc")
        ax.errorbar([x], [y], xerr=[g.std("train_time_s")], yerr=[100 * g.std("final_acc")], marker="o", capsize=3)
        ax.annotate(g.name, (x, y), textcoords="offset points", xytext=(5, 4), fontsize=7)
    if min(times) > 0 and max(times) / min(times) >= 10:  # spread the cheap runs out
        _log_axis(ax)
    ax.set_xlabel("train time (s)")
    ax.set_ylabel("validation accuracy (%)")
    ax.set_title(f"{title}: accuracy vs train time" if title else "accuracy vs train time", fontsize=10)
    ax.grid(alpha=0.3)
    return fig


def ablation_figure(groups: list[Group], title: str = "") -> Figure:
    """One bar per configuration, in sweep order: accuracy (mean ± std over seeds) next to its train time.

    The first configuration is the reference (a dashed line), which reads as an ablation table
    when the others change one setting each."""
    names = [g.name for g in groups]
    acc = [100 * g.mean("final_acc") for g in groups]
    err = [100 * g.std("final_acc") for g in groups]
    times = [g.mean("train_time_s") for g in groups]
    fig = Figure(figsize=(9.0, 0.8 + 0.32 * len(groups)), layout="constrained")
    left, right = fig.subplots(1, 2, sharey=True, width_ratios=[3, 1.4])
    ys = list(range(len(groups)))
    colors = ["tab:gray" if i == 0 else ("tab:green" if a >= acc[0] else "tab:red") for i, a in enumerate(acc)]
    left.barh(ys, acc, xerr=err, color=colors, alpha=0.75, capsize=3)
    left.axvline(acc[0], color="black", linestyle="--", linewidth=0.8)
    low = max(0.0, min(a - e for a, e in zip(acc, err)) - 2)
    left.set_xlim(low, max(a + e for a, e in zip(acc, err)) + 0.12 * (100 - low))
    for y, a, e in zip(ys, acc, err):  # the value right of its error bar
        left.annotate(f"{a:.2f}", (a + e, y), xytext=(4, 0), textcoords="offset points", fontsize=7, va="center")
    left.set_yticks(ys, names, fontsize=8)
    left.invert_yaxis()
    left.set_xlabel("validation accuracy (%), mean ± std over seeds")
    right.barh(ys, times, color="tab:blue", alpha=0.6)
    if min(times) > 0 and max(times) / min(times) >= 10:
        _log_axis(right)
    right.set_xlabel("train time (s)")
    for ax in (left, right):
        ax.grid(axis="x", alpha=0.3)
    fig.suptitle(f"{title}: every configuration against the first" if title else "every configuration against the first",
                 fontsize=10)
    return fig


def write_results(out: str | Path, results: list[RunResult], keys: list[str], title: str, command: str = "",
                  total_trials: int | None = None, description: str = "", setting_plots: bool = True) -> list[Path]:
    """Write results.csv, results.md and the plots into ``out`` (atomically); returns the files written."""
    out = Path(out)
    written = [out / "results.csv", out / "results.md"]
    atomic_write_text(written[0], results_csv(results, keys))
    atomic_write_text(written[1], results_markdown(results, keys, title, command, total_trials, description))
    if not results:
        return written
    groups = group_results(results, keys)
    if setting_plots:
        for key in keys:
            if len(groups) > 1 and not has_line(groups, key, keys):
                continue
            name = short_names(keys)[key].replace(".", "_")
            written.append(save_figure(accuracy_vs_setting_figure(groups, key, keys, title), out / f"accuracy_vs_{name}.png"))
    written.append(save_figure(accuracy_vs_time_figure(groups, title), out / "accuracy_vs_time.png"))
    written.append(save_figure(ablation_figure(groups, title), out / "accuracy_by_configuration.png"))
    return written
