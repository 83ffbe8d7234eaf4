"""A run directory's layout: config.yaml (what was resolved), metrics.jsonl (one line per epoch), the
checkpoints and resume.pt (:mod:`vitlab.training.checkpoint`); created once, never overwritten."""

from __future__ import annotations

import contextlib
import json
import shutil
from pathlib import Path
from typing import Any

import yaml

from vitlab.atomic import atomic_write_text
from vitlab.config import RunConfig
from vitlab.resolve import resumed_config
from vitlab.training.checkpoint import RESUME_FILE

CONFIG_FILE = "config.yaml"
METRICS_FILE = "metrics.jsonl"


class RunExistsError(FileExistsError):
    """The run directory already holds a run."""


def prepare_run_dir(run_dir: Path, cfg: RunConfig, resume: bool) -> None:
    """Create a new run directory, or check that ``resume`` points at an existing one."""
    config_file = run_dir / CONFIG_FILE
    if resume:
        if not config_file.exists():
            raise FileNotFoundError(f"cannot resume: {run_dir} holds no {CONFIG_FILE}; is it a vitlab run directory?")
        remove_stale_temporaries(run_dir)
        return
    if run_dir.exists() and any(run_dir.iterdir()):
        raise RunExistsError(
            f"run directory {run_dir} already exists and is not empty; continue it with "
            f"`vitlab train --resume {run_dir}`, or choose another --run_dir (nothing was overwritten)"
        )
    run_dir.mkdir(parents=True, exist_ok=True)
    write_run_config(run_dir, cfg)


def write_run_config(run_dir: Path, cfg: RunConfig) -> None:
    """The resolved configuration as ``RUN_DIR/config.yaml`` (atomically)."""
    atomic_write_text(run_dir / CONFIG_FILE, yaml.safe_dump(cfg.to_dict(), sort_keys=False))


def read_run_config(run_dir: Path) -> RunConfig:
    return resumed_config(yaml.safe_load((Path(run_dir) / CONFIG_FILE).read_text()) or {}, str(Path(run_dir) / CONFIG_FILE))


def write_metrics(run_dir: Path, history: list[dict[str, Any]]) -> None:
    atomic_write_text(run_dir / METRICS_FILE, "".join(json.dumps(r) + "\n" for r in history))


def discard_unstarted_run(run_dir: Path) -> None:
    """Remove what a run that never finished an epoch wrote (its config, an empty metrics file, a tracker's files)."""
    if not run_dir.is_dir() or (run_dir / RESUME_FILE).exists() or list(run_dir.glob("*.safetensors")):
        return
    for name in (CONFIG_FILE, METRICS_FILE, "tracker.json"):
        (run_dir / name).unlink(missing_ok=True)
    for name in ("tensorboard", "wandb"):
        shutil.rmtree(run_dir / name, ignore_errors=True)
    with contextlib.suppress(OSError):
        run_dir.rmdir()  # only when nothing else is in it


def read_metrics(run_dir: Path) -> list[dict[str, Any]]:
    path = Path(run_dir) / METRICS_FILE
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.is_file() else []


def remove_stale_temporaries(run_dir: Path) -> list[Path]:
    """Temporary files a killed write left (``.NAME.tmp*``, :func:`vitlab.atomic.atomic_write`); only one process
    writes a run directory, so at its next start they are garbage."""
    stale = [p for p in run_dir.glob(".*.tmp*") if p.is_file()]
    for path in stale:
        path.unlink(missing_ok=True)
    return stale
