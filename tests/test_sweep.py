"""vitlab sweep and vitlab compare: planning, running in subprocesses, resuming, results tables and plots."""

from __future__ import annotations

import contextlib
import csv
import io
import json
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
import yaml

from conftest import write_pattern_folder
from vitlab.cli import main
from vitlab.experiments import SweepConflictError, SweepSpec, plan_sweep
from vitlab.experiments.summary import Group, has_line
from vitlab.experiments.sweep import TrialRunner, stop_processes
from vitlab.training import train

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def tiny_base(folder: Path | str, epochs: int = 1) -> dict:
    """A 3-class, 16x16 RGB image folder and a one-block ViT of width 16: a trial takes seconds."""
    return {"preset": "mnist",
            "model": {"img_size": 16, "patch_size": 4, "in_chans": 3, "embed_dim": 16, "depth": 1, "num_heads": 2},
            "data": {"dataset": "imagefolder", "path": str(folder), "num_workers": 0, "augment": "none"},
            "train": {"epochs": epochs, "batch_size": 8}}


def write_sweep(path: Path, folder: Path | str = "unused", epochs: int = 1, **fields) -> Path:
    path.write_text(yaml.safe_dump({"name": "tiny", "base": tiny_base(folder, epochs), **fields}, sort_keys=False))
    return path


def run_cli(argv: list[str]) -> tuple[int, str]:
    """``vitlab ARGV`` in this process; exit status and everything it printed."""
    buffer = io.StringIO()
    with contextlib.redirect_stdout(buffer), contextlib.redirect_stderr(buffer):
        status = main(argv)
    return status, buffer.getvalue()


# ----------------------------------------------------------------------------- planning (nothing is trained)


@pytest.mark.parametrize("sweep_file", sorted((Path(__file__).resolve().parents[1] / "experiments").glob("*.yaml")),
                         ids=lambda p: p.name)
def test_shipped_sweep_files_plan_every_trial(sweep_file, tmp_path):
    """The sweep files in experiments/ stay valid as the configuration grows: each trial resolves, none repeats."""
    spec = SweepSpec.load(sweep_file)
    planned = plan_sweep(spec, tmp_path / "out")
    assert len(planned) == len(spec.trials()) >= 3
    assert all(p.state == "new" for p in planned)


def test_grid_times_seeds_gives_every_trial_with_a_readable_name(tmp_path):
    spec = SweepSpec.load(write_sweep(tmp_path / "s.yaml", grid={"model.patch_size": [2, 4], "train.lr": [0.001, 0.01]},
                                      seeds=[0, 1]))
    slugs = [t.slug for t in spec.trials()]
    assert slugs == [f"patch_size={p}-lr={lr}-seed{s}" for s in (0, 1) for p in (2, 4) for lr in ("0.001", "0.01")]
    assert spec.swept_keys == ["model.patch_size", "train.lr"]
    assert spec.trials()[-1].flags() == ["--model.patch_size=4", "--train.lr=0.01", "--train.seed=1"]
    planned = plan_sweep(spec, tmp_path / "out")
    assert [p.config.model.patch_size for p in planned[:4]] == [(2, 2), (2, 2), (4, 4), (4, 4)]
    assert [p.config.train.seed for p in planned] == [0] * 4 + [1] * 4
    assert {p.state for p in planned} == {"new"} and not (tmp_path / "out").exists()


def test_points_combine_with_the_grid(tmp_path):
    spec = SweepSpec.load(write_sweep(tmp_path / "s.yaml", grid={"model.patch_size": [4, 8]},
                                      points=[{"label": "wide", "model.embed_dim": 32}, {"model.depth": 2}]))
    assert [c.slug for c in spec.configurations()] == ["wide-patch_size=4", "wide-patch_size=8", "depth=2-patch_size=4",
                                                        "depth=2-patch_size=8"]
    assert spec.configurations()[1].overrides == {"model.embed_dim": 32, "model.patch_size": 8}
    assert spec.seeds == [0] and spec.swept_keys == ["model.embed_dim", "model.depth", "model.patch_size"]
    planned = plan_sweep(spec, tmp_path / "out")
    wide, deep = planned[0], planned[3]
    assert (wide.config.model.embed_dim, wide.config.model.depth) == (32, 1)
    assert (deep.config.model.embed_dim, deep.config.model.depth, deep.config.model.patch_size) == (16, 2, (8, 8))
    assert deep.values == {"model.embed_dim": 16, "model.depth": 2, "model.patch_size": 8}  # unset: the base's value


@pytest.mark.parametrize("fields, message", [
    ({"grid": {"model.patch": [4, 8]}}, "unknown setting 'model.patch'; did you mean 'model.patch_size' or 'model.patch_embed'?"),
    ({"grid": {"model": {"depth": [1, 2]}}}, "write one dotted key per setting"),
    ({"grid": {"model.depth": 2}}, "write `model.depth: [2]`"),
    ({"grid": {"train.seed": [0, 1]}}, "seeds: [0, 1, ...]"),
    ({"points": [{"train.optimizer": "lion"}]}, "train.optimizer"),
    ({"grid": {"model.patch_size": [4, 5]}}, "does not divide"),
    ({"seeds": [0, 0]}, "repeat a seed"),
    ({"grdi": {"model.depth": [1]}}, "unknown field(s) ['grdi']"),
])
def test_bad_sweep_files_are_clear_errors_before_anything_runs(tmp_path, fields, message):
    sweep_file = write_sweep(tmp_path / "s.yaml", **fields)
    status, output = run_cli(["sweep", str(sweep_file), "--out", str(tmp_path / "out")])
    assert status == 2 and "vitlab sweep: error:" in output and message in output, output
    assert not (tmp_path / "out").exists()


def test_invalid_yaml_is_reported_with_the_file(tmp_path):
    (tmp_path / "s.yaml").write_text("name: x\ngrid: {model.depth: [1, 2}\n")
    status, output = run_cli(["sweep", str(tmp_path / "s.yaml")])
    assert status == 2 and "is not valid YAML" in output and "s.yaml" in output


def test_dry_run_lists_the_trials_and_runs_nothing(tmp_path):
    sweep_file = write_sweep(tmp_path / "s.yaml", grid={"model.patch_size": [4, 8]}, seeds=[0, 1])
    status, output = run_cli(["sweep", str(sweep_file), "--out", str(tmp_path / "out"), "--dry-run"])
    assert status == 0 and "4 trials (2 configurations x 2 seeds)" in output and "4 new" in output
    for slug in ("patch_size=4-seed0", "patch_size=8-seed0", "patch_size=4-seed1", "patch_size=8-seed1"):
        assert f"--run_dir {tmp_path / 'out' / 'runs' / slug} " in output
    assert "--model.patch_size=8 --train.seed=1 --quiet" in output
    assert not (tmp_path / "out").exists()


def test_a_run_of_another_configuration_is_an_error_not_a_mix(tmp_path):
    spec = SweepSpec.load(write_sweep(tmp_path / "s.yaml", grid={"model.patch_size": [4, 8]}))
    planned = plan_sweep(spec, tmp_path / "out")
    saved = planned[1].config.to_dict()
    saved["model"]["depth"] = 3  # the sweep file said depth 3 when this run was trained
    planned[1].run_dir.mkdir(parents=True)
    (planned[1].run_dir / "config.yaml").write_text(yaml.safe_dump(saved))
    with pytest.raises(SweepConflictError, match=r"model.depth: run has 3, sweep wants 1.*another --out"):
        plan_sweep(spec, tmp_path / "out")


def test_parallel_trials_get_their_own_gpu_or_a_share_of_the_cores(tmp_path, monkeypatch):
    planned = plan_sweep(SweepSpec.load(write_sweep(tmp_path / "s.yaml")), tmp_path / "out")[0]
    runner = TrialRunner(tmp_path, workers=3)
    runner.gpus = ["0", "3"]
    assert [runner.device_env(planned.config, slot) for slot in range(3)] == [
        {"CUDA_VISIBLE_DEVICES": "0"}, {"CUDA_VISIBLE_DEVICES": "3"}, {"CUDA_VISIBLE_DEVICES": "0"}]
    runner.gpus = []
    monkeypatch.setattr("os.sched_getaffinity", lambda pid: set(range(12)))
    assert runner.device_env(planned.config, 1) == {"OMP_NUM_THREADS": "4", "MKL_NUM_THREADS": "4"}
    assert TrialRunner(tmp_path, workers=1).device_env(planned.config, 0) == {}


def test_stopping_interrupts_the_children():
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"], stderr=subprocess.DEVNULL)
    time.sleep(0.3)
    started = time.monotonic()
    stop_processes([child], grace_s=5)
    assert child.returncode is not None and time.monotonic() - started < 5


# ----------------------------------------------------------------------------- running (one sweep, several checks)


@pytest.fixture(scope="module")
def finished_sweep(tmp_path_factory):
    """2 patch sizes x 2 seeds, 2 epochs, two workers. Before it runs, one trial is finished (skipped), one
    stopped after epoch 1 (resumed), one left a run directory with nothing to resume (moved aside), one is new."""
    root = tmp_path_factory.mktemp("sweep")
    with pytest.MonkeyPatch.context() as env:
        env.setenv("VITLAB_CACHE_DIR", str(tmp_path_factory.getbasetemp() / "vitlab-cache"))
        folder = write_pattern_folder(root / "images", {"train": 8, "val": 4})
        sweep_file = write_sweep(root / "tiny.yaml", folder, epochs=2, grid={"model.patch_size": [4, 8]}, seeds=[0, 1],
                                 description="Patch size on tiny patterns.")
        out = root / "out"
        planned = {p.trial.slug: p for p in plan_sweep(SweepSpec.load(sweep_file), out)}
        cut = planned["patch_size=4-seed0"]
        train(cut.config, cut.run_dir, progress=False, stop_after_epoch=1)
        uninterrupted = train(cut.config, root / "uninterrupted", progress=False)
        finished = planned["patch_size=8-seed0"]
        train(finished.config, finished.run_dir, progress=False)
        stale = planned["patch_size=8-seed1"].run_dir
        stale.mkdir(parents=True)
        (stale / "notes.txt").write_text("keep me")
        status, output = run_cli(["sweep", str(sweep_file), "--out", str(out), "--workers", "2"])
    return SimpleNamespace(status=status, output=output, out=out, sweep_file=sweep_file, runs=out / "runs",
                           uninterrupted=uninterrupted.history)


def test_sweep_trains_every_trial_and_writes_results(finished_sweep):
    s = finished_sweep
    assert s.status == 0, s.output
    assert "4 trials (2 configurations x 2 seeds)" in s.output and "1 done, 1 resume, 1 restart, 1 new" in s.output
    assert sorted(p.name for p in s.runs.iterdir() if ".incomplete-" not in p.name) == [
        "patch_size=4-seed0", "patch_size=4-seed1", "patch_size=8-seed0", "patch_size=8-seed1"]
    rows = list(csv.DictReader((s.out / "results.csv").open()))
    assert [(r["model.patch_size"], r["seed"]) for r in rows] == [("4", "0"), ("8", "0"), ("4", "1"), ("8", "1")]
    for row in rows:
        history = [json.loads(line) for line in (Path(row["run_dir"]) / "metrics.jsonl").read_text().splitlines()]
        assert row["epochs"] == "2" and float(row["final_val_acc"]) == pytest.approx(history[-1]["val_acc"], abs=1e-6)
        assert float(row["train_time_s"]) == pytest.approx(history[-1]["elapsed_s"], abs=0.01)
        last = json.loads((Path(row["run_dir"]) / "last.json").read_text())
        assert int(row["params"]) == last["params"] and int(row["flops_per_image"]) == last["flops"]
    assert rows[0]["params"] != rows[1]["params"]  # patch 8 has a bigger patch embedding
    table = (s.out / "results.md").read_text()
    config_rows = [line for line in table.splitlines() if line.startswith("| 4 ") or line.startswith("| 8 ")]
    assert len(config_rows) == 2 and all("±" in line and "(n=2)" in line for line in config_rows)
    assert "# sweep tiny\n\nPatch size on tiny patterns." in table and "torch" in table and f"--out {s.out}" in table
    for plot in ("accuracy_vs_patch_size.png", "accuracy_vs_time.png", "accuracy_by_configuration.png"):
        assert (s.out / plot).read_bytes().startswith(PNG_MAGIC)
    assert table in s.output  # the table is printed too
    assert not (s.out / "logs" / "patch_size=8-seed0.log").exists()  # finished before: not trained again


def test_half_finished_trial_resumes_and_matches_an_uninterrupted_run(finished_sweep):
    run = finished_sweep.runs / "patch_size=4-seed0"
    history = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [h["epoch"] for h in history] == [1, 2]
    for got, want in zip(history, finished_sweep.uninterrupted):
        for key in ("train_loss", "val_loss", "val_acc", "lr"):
            assert got[key] == pytest.approx(want[key], rel=1e-5), key
    assert f"train --resume {run} --quiet" in (finished_sweep.out / "logs" / f"{run.name}.log").read_text()


def test_a_run_directory_with_nothing_to_resume_is_moved_aside(finished_sweep):
    aside = list(finished_sweep.runs.glob("patch_size=8-seed1.incomplete-*"))
    assert len(aside) == 1 and (aside[0] / "notes.txt").read_text() == "keep me"
    assert (finished_sweep.runs / "patch_size=8-seed1" / "last.json").exists()


def test_running_the_sweep_again_trains_nothing(finished_sweep):
    s = finished_sweep
    checkpoints = {p: p.stat().st_mtime_ns for p in s.runs.glob("*/last.safetensors")}
    logs = {p: p.stat().st_size for p in (s.out / "logs").iterdir()}
    status, output = run_cli(["sweep", str(s.sweep_file), "--out", str(s.out)])
    assert status == 0 and "; 4 done" in output and "4 of 4 trials finished" in output
    assert len(checkpoints) == 4 and {p: p.stat().st_mtime_ns for p in checkpoints} == checkpoints
    assert {p: p.stat().st_size for p in (s.out / "logs").iterdir()} == logs


def test_compare_groups_seeds_and_shows_the_setting_that_differs(finished_sweep, tmp_path):
    runs = [finished_sweep.runs / name for name in ("patch_size=4-seed0", "patch_size=4-seed1", "patch_size=8-seed0")]
    status, output = run_cli(["compare", *map(str, runs), "--out", str(tmp_path / "cmp")])
    assert status == 0, output
    header = next(line for line in output.splitlines() if line.startswith("| patch_size |"))
    assert "val acc (%)" in header and "seed" not in header and "depth" not in header
    assert any(line.startswith("| 4 |") and "(n=2)" in line for line in output.splitlines())
    assert any(line.startswith("| 8 |") and "(n=1)" in line for line in output.splitlines())
    assert len(list(csv.DictReader((tmp_path / "cmp" / "results.csv").open()))) == 3
    assert (tmp_path / "cmp" / "accuracy_vs_time.png").read_bytes().startswith(PNG_MAGIC)
    status, output = run_cli(["compare", *map(str, runs[:2]), "--labels", "a", "b", "c"])
    assert status == 2 and "give one per run" in output


def test_failing_trials_are_reported_and_the_sweep_goes_on(tmp_path):
    missing = [str(tmp_path / "no-such-folder-a"), str(tmp_path / "no-such-folder-b")]
    sweep_file = write_sweep(tmp_path / "s.yaml", grid={"data.path": missing})
    status, output = run_cli(["sweep", str(sweep_file), "--out", str(tmp_path / "out")])  # one after the other
    assert status == 1
    for log in sorted((tmp_path / "out" / "logs").iterdir()):
        assert "does not exist" in log.read_text() and f"FAILED {log.stem}" in output
    assert len(list((tmp_path / "out" / "logs").iterdir())) == 2 and "0 of 2 trials finished" in output


def test_a_setting_that_never_changes_alone_gets_no_plot_of_its_own():
    base = {"model.pool": "cls", "model.class_token": True, "model.depth": 4}
    groups = [Group(base, "base", "base", []), Group({**base, "model.pool": "gap", "model.class_token": False}, None, "gap", []),
              Group({**base, "model.depth": 2}, None, "depth=2", [])]
    keys = list(base)
    assert has_line(groups, "model.depth", keys)  # base and depth=2 differ in depth alone
    assert not has_line(groups, "model.pool", keys) and not has_line(groups, "model.class_token", keys)
