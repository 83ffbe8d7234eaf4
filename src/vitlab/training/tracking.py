"""Experiment trackers: ``--train.tracker {none,tensorboard,mlflow,wandb}``.

Every tracker gets the same things from the training loop (rank 0 only): the resolved configuration as
parameters once, per-step loss, learning rate and throughput every :data:`STEP_EVERY` steps, the epoch record
of metrics.jsonl after every epoch, and at the end the figures and the best checkpoint as artifacts. Where the
tracker keeps its runs is its own business and is set the way its users expect: TensorBoard writes to
``RUN_DIR/tensorboard``; MLflow follows ``MLFLOW_TRACKING_URI`` (e.g. ``sqlite:///mlflow.db``), and W&B follows
``WANDB_MODE`` / ``WANDB_DIR`` (``WANDB_MODE=offline`` keeps everything on disk). A resumed run continues the same
tracked run: its id is kept in ``RUN_DIR/tracker.json``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from vitlab.atomic import atomic_write_text

TRACKERS = ("none", "tensorboard", "mlflow", "wandb")
STEP_EVERY = 20
"""Optimisation steps between two per-step records (the progress bar's cadence)."""
TRACKER_FILE = "tracker.json"
_EXTRAS = {"tensorboard": "tensorboard", "mlflow": "mlflow", "wandb": "wandb"}


def flat_params(config: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"model": {"depth": 4}}`` -> ``{"model.depth": 4}`` (lists and None as text)."""
    out: dict[str, Any] = {}
    for key, value in config.items():
        if isinstance(value, dict):
            out.update(flat_params(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value if isinstance(value, (int, float, str, bool)) else json.dumps(value)
    return out


class Tracker:
    """What the training loop calls; the base class tracks nothing (``--train.tracker none``)."""

    active = False
    """Whether anything is tracked (the loop reads the per-step loss only then)."""

    def log_step(self, step: int, metrics: dict[str, float]) -> None: ...

    def log_epoch(self, step: int, record: dict[str, Any]) -> None: ...

    def log_files(self, files: dict[str, Path]) -> None:
        """``name -> file``: figures (``.png``) and checkpoints, after the last epoch."""

    def close(self, finished: bool) -> None: ...


class TensorBoardTracker(Tracker):
    """Scalars and figures into ``RUN_DIR/tensorboard`` (``tensorboard --logdir runs`` shows every run)."""

    active = True

    def __init__(self, run_dir: Path, config: dict[str, Any], run_id: str | None) -> None:
        from torch.utils.tensorboard import SummaryWriter

        self.run_id = "tensorboard"
        self.writer = SummaryWriter(log_dir=str(run_dir / "tensorboard"))
        if run_id is None:
            self.writer.add_text("config", "```\n" + json.dumps(config, indent=2) + "\n```")

    def log_step(self, step: int, metrics: dict[str, float]) -> None:
        for key, value in metrics.items():
            self.writer.add_scalar(f"step/{key}", value, step)

    def log_epoch(self, step: int, record: dict[str, Any]) -> None:
        for key, value in record.items():
            if key != "epoch":
                self.writer.add_scalar(key, value, record["epoch"])
        self.writer.flush()

    def log_files(self, files: dict[str, Path]) -> None:
        import numpy as np
        from PIL import Image

        for name, path in files.items():
            if path.suffix == ".png":
                self.writer.add_image(name, np.asarray(Image.open(path).convert("RGB")), dataformats="HWC")

    def close(self, finished: bool) -> None:
        self.writer.close()


class MLflowTracker(Tracker):
    """One MLflow run in the experiment ``project`` of the tracking server ``MLFLOW_TRACKING_URI`` (MLflow's default
    otherwise); parameters, metrics and artifacts through ``MlflowClient`` (no global active run)."""

    active = True

    def __init__(self, run_dir: Path, config: dict[str, Any], run_id: str | None, project: str) -> None:
        from mlflow.tracking import MlflowClient

        self.client = MlflowClient()
        if run_id is None:
            experiment = self.client.get_experiment_by_name(project)
            experiment_id = experiment.experiment_id if experiment else self.client.create_experiment(project)
            run = self.client.create_run(experiment_id, run_name=run_dir.name, tags={"vitlab.run_dir": str(run_dir)})
            run_id = run.info.run_id
            params = flat_params(config)
            items = list(params.items())
            for start in range(0, len(items), 100):  # MLflow takes at most 100 parameters per call
                self.client.log_batch(run_id, params=[_param(k, v) for k, v in items[start:start + 100]])
        else:
            self.client.update_run(run_id, status="RUNNING")
        self.run_id = run_id

    def log_step(self, step: int, metrics: dict[str, float]) -> None:
        self._metrics({f"step_{k}": v for k, v in metrics.items()}, step)

    def log_epoch(self, step: int, record: dict[str, Any]) -> None:
        self._metrics({k: v for k, v in record.items() if k != "epoch"}, record["epoch"])

    def _metrics(self, metrics: dict[str, float], step: int) -> None:
        from mlflow.entities import Metric

        now = _millis()
        self.client.log_batch(self.run_id, metrics=[Metric(k, float(v), now, step) for k, v in metrics.items()])

    def log_files(self, files: dict[str, Path]) -> None:
        for path in files.values():
            self.client.log_artifact(self.run_id, str(path), artifact_path="figures" if path.suffix == ".png" else None)

    def close(self, finished: bool) -> None:
        self.client.set_terminated(self.run_id, status="FINISHED" if finished else "KILLED")


class WandbTracker(Tracker):
    """One Weights & Biases run in ``project`` (``WANDB_MODE=offline`` keeps it on disk for ``wandb sync``)."""

    active = True

    def __init__(self, run_dir: Path, config: dict[str, Any], run_id: str | None, project: str) -> None:
        import wandb

        self.wandb = wandb
        self.run = wandb.init(project=project, name=run_dir.name, dir=str(run_dir), config=config, id=run_id,
                              resume="allow" if run_id else None, reinit="create_new")
        self.run_id = self.run.id

    def log_step(self, step: int, metrics: dict[str, float]) -> None:
        self.run.log({f"step/{k}": v for k, v in metrics.items()}, step=step)

    def log_epoch(self, step: int, record: dict[str, Any]) -> None:
        self.run.log(dict(record), step=step)

    def log_files(self, files: dict[str, Path]) -> None:
        images = {name: self.wandb.Image(str(path)) for name, path in files.items() if path.suffix == ".png"}
        if images:
            self.run.log(images, step=self.run.step)
        checkpoints = [path for path in files.values() if path.suffix != ".png"]
        if checkpoints:
            artifact = self.wandb.Artifact(f"{self.run.name}-model".replace("/", "-"), type="model")
            for path in checkpoints:
                artifact.add_file(str(path))
            self.run.log_artifact(artifact)

    def close(self, finished: bool) -> None:
        self.run.finish(exit_code=0 if finished else 1)


def open_tracker(kind: str, run_dir: Path, config: dict[str, Any], project: str = "vitlab") -> Tracker:
    """The tracker ``kind`` for this run directory; a resumed run continues its tracked run."""
    if kind == "none":
        return Tracker()
    saved = _read_tracker_file(run_dir)
    run_id = saved.get("run_id") if saved.get("tracker") == kind else None
    try:
        if kind == "tensorboard":
            tracker: Tracker = TensorBoardTracker(run_dir, config, run_id)
        elif kind == "mlflow":
            tracker = MLflowTracker(run_dir, config, run_id, project)
        elif kind == "wandb":
            tracker = WandbTracker(run_dir, config, run_id, project)
        else:
            raise ValueError(f"unknown --train.tracker {kind!r}; choose one of {', '.join(TRACKERS)}")
    except ImportError as exc:
        raise ValueError(f"--train.tracker {kind} needs the {_EXTRAS[kind]} package: pip install \"vitlab[{kind}]\" (or "
                         "--train.tracker none; metrics.jsonl and figures/ have the same numbers)") from exc
    atomic_write_text(run_dir / TRACKER_FILE, json.dumps({"tracker": kind, "run_id": tracker.run_id}) + "\n")
    return tracker


def _read_tracker_file(run_dir: Path) -> dict[str, Any]:
    try:
        return json.loads((run_dir / TRACKER_FILE).read_text())
    except (OSError, ValueError):
        return {}


def _param(key: str, value: Any):
    from mlflow.entities import Param

    return Param(key, str(value)[:6000])  # MLflow's longest parameter value


def _millis() -> int:
    import time

    return int(time.time() * 1000)
