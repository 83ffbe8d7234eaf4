"""Run a sweep: plan its trials against what the output folder already holds, then train what is left.

Each trial is ``vitlab train`` in its own process, writing ``OUT/runs/SLUG-seedK`` (its
output goes to ``OUT/logs/SLUG-seedK.log``). Running the same sweep again skips finished
trials, resumes half-finished ones and restarts the rest, so a crash or Ctrl-C costs at
most the epochs in progress. The results (``OUT/results.*``, plots) are rebuilt from the
run directories at the end of every sweep.
"""

from __future__ import annotations

import os
import shlex
import signal
import subprocess
import sys
import tempfile
import time
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, get_args

import yaml
from jsonargparse import ArgumentError
from tqdm.auto import tqdm

from vitlab.atomic import atomic_write_text
from vitlab.config import RunConfig
from vitlab.experiments.keys import RUNTIME_KEYS, flatten, format_value
from vitlab.experiments.spec import SweepSpec, Trial
from vitlab.experiments.summary import RunResult, load_run, write_results
from vitlab.flags import parse_train_flags
from vitlab.training.checkpoint import RESUME_FILE
from vitlab.training.rundir import CONFIG_FILE, METRICS_FILE

BASE_FILE = "base.yaml"
RUNS_DIR = "runs"
LOGS_DIR = "logs"


class SweepConflictError(ValueError):
    """A run directory holds a run of another configuration than the sweep's trial."""


TrialState = Literal["done", "resume", "restart", "new"]
"""What a trial's run directory holds: a finished run, a resumable one, one to move aside, or nothing."""


@dataclass
class PlannedTrial:
    """A trial, its full configuration, its swept values, and the state of its run directory."""

    trial: Trial
    config: RunConfig
    values: dict[str, Any]
    run_dir: Path
    state: TrialState
    epochs_done: int = 0


def plan_sweep(spec: SweepSpec, out: str | Path) -> list[PlannedTrial]:
    """Resolve every trial's configuration and look at its run directory; writes nothing.

    Raises ValueError for a setting ``vitlab train`` would refuse and :class:`SweepConflictError`
    when a run directory holds a run of a different configuration.
    """
    out = Path(out)
    with tempfile.TemporaryDirectory() as tmp:
        base_file = Path(tmp) / BASE_FILE
        base_file.write_text(yaml.safe_dump(spec.base, sort_keys=False))
        resolved = [(trial, *resolve_trial(base_file, trial)) for trial in spec.trials()]
    seen: dict[str, str] = {}
    for trial, _, config in resolved:
        key = repr(sorted(_comparable(config.to_dict()).items()))
        if key in seen:
            raise ValueError(f"sweep {spec.name}: trials {seen[key]} and {trial.slug} train the same configuration; "
                             "remove one of them")
        seen[key] = trial.slug
    planned = []
    for trial, preset, config in resolved:
        flat = {**flatten(config.to_dict()), "preset": preset}
        values = {key: trial.configuration.overrides.get(key, flat.get(key)) for key in spec.swept_keys}
        run_dir = out / RUNS_DIR / trial.slug
        state, epochs = inspect_run_dir(run_dir, config)
        planned.append(PlannedTrial(trial, config, values, run_dir, state, epochs))
    return planned


def resolve_trial(base_file: Path, trial: Trial) -> tuple[str, RunConfig]:
    """The preset and configuration ``vitlab train --config BASE_FILE FLAGS...`` would train."""
    argv = ["--config", str(base_file), *trial.flags()]
    try:
        try:  # raise, so the error can name the trial
            args, config = parse_train_flags(argv, strict=True)
        except FileNotFoundError:  # data not reachable now: plan without it; the trial reports it when it runs
            args, config = parse_train_flags(argv, strict=True, facts=False)
        return args.preset, config
    except (ArgumentError, ValueError, TypeError) as exc:  # the parser's, or the model config's (patch does not divide)
        message = " ".join(str(exc).split())
        raise ValueError(f"trial {trial.slug} ({' '.join(trial.flags())}): {message}") from None


def _comparable(config: dict[str, Any]) -> dict[str, Any]:
    """A config as flat dotted keys, without the runtime settings and the head size the data decides."""
    flat = flatten(yaml.safe_load(yaml.safe_dump(config)))  # tuples -> lists, as in config.yaml
    return {k: v for k, v in flat.items() if k not in RUNTIME_KEYS and k != "model.num_classes"}


def inspect_run_dir(run_dir: Path, config: RunConfig) -> tuple[TrialState, int]:
    """(state, finished epochs): ``new`` (nothing there), ``done``, ``resume`` (resume state saved) or ``restart``."""
    if not run_dir.is_dir() or not any(run_dir.iterdir()):
        return "new", 0
    saved_file = run_dir / CONFIG_FILE
    if saved_file.is_file():
        saved, wanted = _comparable(yaml.safe_load(saved_file.read_text()) or {}), _comparable(config.to_dict())
        differences = [f"{key}: run has {format_value(saved[key])}, sweep wants {format_value(wanted[key])}"
                       for key in wanted if key in saved and saved[key] != wanted[key]]
        if differences:
            raise SweepConflictError(
                f"{run_dir} holds a run of another configuration ({'; '.join(differences[:6])}). The sweep file changed "
                "since that run: restore it, write the changed sweep to another --out, or move that run directory away")
    metrics = run_dir / METRICS_FILE
    epochs = len(metrics.read_text().splitlines()) if metrics.is_file() else 0
    if saved_file.is_file() and epochs >= config.train.epochs and (run_dir / "last.json").is_file():
        return "done", epochs
    if saved_file.is_file() and (run_dir / RESUME_FILE).is_file():
        return "resume", epochs
    return "restart", epochs


def train_command(planned: PlannedTrial, base_file: Path) -> list[str]:
    """The ``vitlab train`` arguments for a trial: a new run, or ``--resume`` of a half-finished one."""
    if planned.state == "resume":
        return ["train", "--resume", str(planned.run_dir), "--quiet"]
    return ["train", "--config", str(base_file), "--run_dir", str(planned.run_dir), *planned.trial.flags(), "--quiet"]


def plan_summary(planned: list[PlannedTrial], spec: SweepSpec, out: Path) -> str:
    """One line: how many trials, and how many are done, to resume, to restart and new."""
    counts = {state: sum(p.state == state for p in planned) for state in get_args(TrialState)}
    configurations, seeds = len(spec.configurations()), len(spec.seeds)
    return (f"sweep {spec.name}: {len(planned)} trials ({configurations} configuration{'s' * (configurations > 1)} x {seeds} "
            f"seed{'s' * (seeds > 1)}) in {out}; " + ", ".join(f"{n} {state}" for state, n in counts.items() if n))


def describe_plan(planned: list[PlannedTrial], spec: SweepSpec, out: Path) -> str:
    """What a sweep would do: the summary, then one line per trial with its state and command."""
    lines = [plan_summary(planned, spec, out)]
    for p in planned:
        state = f"{p.state} ({p.epochs_done} epochs)" if p.state in ("done", "resume") else p.state
        command = "" if p.state == "done" else shlex.join(["vitlab", *train_command(p, out / BASE_FILE)])
        lines.append(f"  {state:<20} {p.trial.slug:<32} {command}")
    return "\n".join(lines)


def run_sweep(spec: SweepSpec, out: str | Path, workers: int = 1, command: str = "") -> list[PlannedTrial]:
    """Train every trial that is not finished, ``workers`` at a time; write the results; return the failed trials.

    Ctrl-C stops the trials in progress (their finished epochs stay resumable) and raises KeyboardInterrupt.
    """
    if workers < 1:
        raise ValueError(f"--workers must be at least 1, got {workers}")
    out = Path(out)
    planned = plan_sweep(spec, out)
    atomic_write_text(out / BASE_FILE, yaml.safe_dump(spec.base, sort_keys=False))
    if spec.source is not None:
        atomic_write_text(out / "sweep.yaml", spec.source.read_text())
    todo = [p for p in planned if p.state != "done"]
    print(plan_summary(planned, spec, out))
    failed: list[PlannedTrial] = []
    try:
        if todo:
            failed = TrialRunner(out, workers).run(todo, total=len(planned))
    finally:
        written = write_results(out, collect_results(planned), spec.swept_keys, title=f"sweep {spec.name}",
                                command=command, total_trials=len(planned), description=spec.description)
    print(f"\n{(out / 'results.md').read_text()}\nwritten in {out}: {', '.join(p.name for p in written)}")
    for p in failed:
        print(f"failed: {p.trial.slug}, see {log_path(out, p.trial)}", file=sys.stderr)
    return failed


def log_path(out: Path, trial: Trial) -> Path:
    """Where a trial's output goes (beside its run directory, which `vitlab train` wants empty)."""
    return out / LOGS_DIR / f"{trial.slug}.log"


def collect_results(planned: list[PlannedTrial]) -> list[RunResult]:
    """The finished trials' results, in sweep order, labelled with their swept values."""
    results = []
    for p in planned:
        if inspect_run_dir(p.run_dir, p.config)[0] == "done":
            result = load_run(p.run_dir)
            configuration = p.trial.configuration
            result.values, result.label, result.name = p.values, configuration.label, configuration.name
            results.append(result)
    return results


@dataclass
class _Job:
    planned: PlannedTrial
    process: subprocess.Popen
    started: float


class TrialRunner:
    """Runs trials as ``vitlab train`` subprocesses, ``workers`` at a time, with one progress bar."""

    def __init__(self, out: Path, workers: int = 1):
        self.out, self.workers = out, workers
        self.gpus = visible_gpus()

    def run(self, todo: list[PlannedTrial], total: int) -> list[PlannedTrial]:
        pending, running, failed = deque(todo), {}, []
        bar = tqdm(total=total, initial=total - len(todo), desc="sweep", unit="trial", dynamic_ncols=True)
        try:
            while pending or running:
                for slot in range(self.workers):
                    if slot not in running and pending:
                        running[slot] = self.start(pending.popleft(), slot, bar)
                time.sleep(0.2)
                for slot, job in list(running.items()):
                    if job.process.poll() is not None:
                        del running[slot]
                        if not self.finish(job, bar):
                            failed.append(job.planned)
                        bar.update()
        except KeyboardInterrupt:
            stop_processes([job.process for job in running.values()])  # their finished epochs stay resumable
            raise
        finally:
            bar.close()
        return failed

    def start(self, planned: PlannedTrial, slot: int, bar: tqdm) -> _Job:
        if planned.state == "restart":  # nothing to resume: keep what is there, start again
            aside = move_aside(planned.run_dir)
            bar.write(f"moved incomplete {planned.run_dir} to {aside.name}; starting it again")
        argv = [sys.executable, "-m", "vitlab.cli", *train_command(planned, self.out / BASE_FILE)]
        log_file = log_path(self.out, planned.trial)
        log_file.parent.mkdir(parents=True, exist_ok=True)
        with open(log_file, "a") as log:
            log.write(f"### {time.strftime('%Y-%m-%d %H:%M:%S')} {shlex.join(argv)}\n")
            log.flush()
            env = {**os.environ, "PYTHONUNBUFFERED": "1", **self.device_env(planned.config, slot)}
            process = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, env=env)
        return _Job(planned, process, time.perf_counter())

    def device_env(self, config: RunConfig, slot: int) -> dict[str, str]:
        """Parallel trials share the machine: one GPU each (round-robin), or an equal share of the CPU cores."""
        if self.workers == 1:
            return {}
        if self.gpus and config.train.device in ("auto", "cuda"):
            return {"CUDA_VISIBLE_DEVICES": self.gpus[slot % len(self.gpus)]}
        threads = str(max(1, len(os.sched_getaffinity(0)) // self.workers))
        return {"OMP_NUM_THREADS": threads, "MKL_NUM_THREADS": threads}

    def finish(self, job: _Job, bar: tqdm) -> bool:
        planned, seconds = job.planned, time.perf_counter() - job.started
        state, _ = inspect_run_dir(planned.run_dir, planned.config)
        if job.process.returncode != 0 or state != "done":
            log_file = log_path(self.out, planned.trial)
            tail = "\n".join(f"    {line}" for line in log_file.read_text(errors="replace").splitlines()[-6:])
            bar.write(f"FAILED {planned.trial.slug} (exit status {job.process.returncode}, {seconds:.0f}s); "
                      f"log {log_file}:\n{tail}")
            return False
        result = load_run(planned.run_dir)
        bar.write(f"done {planned.trial.slug}: val acc {100 * result.final_acc:.2f}% (best {100 * result.best_acc:.2f}%), "
                  f"{seconds:.0f}s")
        return True


def visible_gpus() -> list[str]:
    """The CUDA devices this process may use, as CUDA_VISIBLE_DEVICES names them."""
    import torch

    if not torch.cuda.is_available():
        return []
    listed = [d.strip() for d in os.environ.get("CUDA_VISIBLE_DEVICES", "").split(",") if d.strip()]
    return (listed or [str(i) for i in range(torch.cuda.device_count())])[:torch.cuda.device_count()]


def stop_processes(processes: list[subprocess.Popen], grace_s: float = 10.0) -> None:
    """Interrupt each child like Ctrl-C would; kill those still running after ``grace_s``."""
    for process in processes:
        if process.poll() is None:
            process.send_signal(signal.SIGINT)
    deadline = time.monotonic() + grace_s
    for process in processes:
        try:
            process.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def move_aside(run_dir: Path) -> Path:
    """Rename ``run_dir`` to ``NAME.incomplete-TIMESTAMP`` (never deleted)."""
    stamp = time.strftime("%Y%m%d-%H%M%S")
    aside = run_dir.with_name(f"{run_dir.name}.incomplete-{stamp}")
    n = 1
    while aside.exists():
        n += 1
        aside = run_dir.with_name(f"{run_dir.name}.incomplete-{stamp}-{n}")
    run_dir.rename(aside)
    return aside
