"""--train.time_budget_s: the number of epochs planned from the first epoch's time."""

from __future__ import annotations

import time
from types import SimpleNamespace

import pytest
import torch
import yaml
from torch import nn

import vitlab.training.trainer as trainer_module
from test_training import tiny_run
from vitlab.config import FinetuneConfig, RunConfig, TrainConfig
from vitlab.training import load_checkpoint, train
from vitlab.training.budget import SAFETY, epoch_seconds, judge_epochs, planned_epochs, replanned_epochs
from vitlab.training.checkpoint import read_checkpoint_info
from vitlab.training.optim import build_optimizer, build_scheduler


def test_planned_epochs_fill_the_rest_of_the_budget():
    assert planned_epochs(100, elapsed_s=10, epoch_s=20) == 1 + int(SAFETY * 90 // 20)  # 1 done + 4 more
    assert planned_epochs(3600, elapsed_s=300, epoch_s=200, done_epochs=1) == 1 + int(SAFETY * 3300 // 200)
    assert planned_epochs(100, elapsed_s=150, epoch_s=20) == 1  # over budget already: stop after the first
    with pytest.raises(ValueError, match="must be positive"):
        planned_epochs(0, elapsed_s=1, epoch_s=1)
    # the steady rate, not the first steps' compile time: 10 s over 90 steps -> 100 steps in 11.1 s, + 2 s validation
    assert epoch_seconds(100, timed_steps=90, timed_s=10.0, train_s=70.0, val_s=2.0) == pytest.approx(100 / 9 + 2)
    assert epoch_seconds(3, timed_steps=0, timed_s=0.0, train_s=1.5, val_s=0.5) == 2.0  # too short to time


@pytest.mark.parametrize("staged", [False, True])
def test_a_rebuilt_schedule_continues_as_if_planned_from_the_start(staged):
    """Re-planning after k steps: from then on the rates are those of the run planned with the new total."""
    ft = FinetuneConfig(mode="staged", head_epochs=1, backbone_lr_scale=0.3) if staged else None
    model = nn.Sequential(nn.Linear(4, 4), nn.Linear(4, 2))
    model.head = model[1]  # lets param_groups see a head
    steps, k = 10, 10  # re-planned after the first epoch
    planned = TrainConfig(epochs=7, lr=1e-2, warmup_epochs=1.0)
    opt_a = build_optimizer(model, planned, ft)
    sched_a = build_scheduler(opt_a, planned, steps, ft)
    opt_b = build_optimizer(model, TrainConfig(epochs=30, lr=1e-2, warmup_epochs=1.0), ft)
    sched_b = build_scheduler(opt_b, TrainConfig(epochs=30, lr=1e-2, warmup_epochs=1.0), steps, ft)
    for _ in range(k):
        opt_a.step(), sched_a.step(), opt_b.step(), sched_b.step()
    sched_b = build_scheduler(opt_b, planned, steps, ft, steps_done=sched_b.last_epoch)
    for _ in range(steps * planned.epochs - k):
        assert [g["lr"] for g in opt_b.param_groups] == pytest.approx([g["lr"] for g in opt_a.param_groups], rel=1e-12)
        opt_a.step(), sched_a.step(), opt_b.step(), sched_b.step()
    assert min(g["lr"] for g in opt_a.param_groups) < 1e-4  # the cosine reached its end: the comparison covered it


@pytest.fixture
def capped_plan(monkeypatch):
    """The real plan, recorded, but at most 4 epochs (re-plans too) so that the test stays short on any machine."""
    calls = []

    def plan(budget_s, elapsed_s, epoch_s, done_epochs=1):
        calls.append({"budget_s": budget_s, "elapsed_s": elapsed_s, "epoch_s": epoch_s, "done": done_epochs,
                      "planned": planned_epochs(budget_s, elapsed_s, epoch_s, done_epochs)})
        return min(4, calls[-1]["planned"])

    def replan(*args):  # the later checks' totals capped as well
        total = replanned_epochs(*args)
        return None if total is None else min(4, total)

    monkeypatch.setattr(trainer_module, "planned_epochs", plan)
    monkeypatch.setattr(trainer_module, "replanned_epochs", replan)
    return calls


def test_a_budgeted_run_plans_its_epochs_and_equals_the_run_planned_by_hand(pattern_folder, tmp_path, capped_plan):
    cfg = tiny_run(pattern_folder, epochs=50, warmup_epochs=1.0, time_budget_s=10.0)
    result = train(cfg, tmp_path / "budget", progress=False)
    call = capped_plan[0]  # planned after the first epoch (a later re-plan keeps the cap)
    first = result.history[0]
    assert call["done"] == 1 and call["budget_s"] == 10.0
    assert first["elapsed_s"] <= call["elapsed_s"]  # counted from the start of train(), data loading included
    assert 0 < call["epoch_s"] <= 2 * first["epoch_s"]  # validation in, the first steps' warm-up out
    epochs = min(4, call["planned"])
    saved = yaml.safe_load((tmp_path / "budget" / "config.yaml").read_text())
    assert saved["train"]["epochs"] == epochs and saved["train"]["time_budget_s"] == 10.0  # the plan is kept
    assert [h["epoch"] for h in result.history] == list(range(1, epochs + 1))
    assert load_checkpoint(tmp_path / "budget" / "last.safetensors")[1]["run_config"]["train"]["epochs"] == epochs

    # warm-up covers the first epoch, so the budgeted run is the run asked for with --train.epochs N
    by_hand = train(tiny_run(pattern_folder, epochs=epochs, warmup_epochs=1.0), tmp_path / "by_hand", progress=False)
    assert [h["train_loss"] for h in by_hand.history] == [h["train_loss"] for h in result.history]
    a, _ = load_checkpoint(tmp_path / "budget" / "last.safetensors")
    b, _ = load_checkpoint(tmp_path / "by_hand" / "last.safetensors")
    for (name, p), q in zip(a.state_dict().items(), b.state_dict().values()):
        assert torch.equal(p, q), name

    # cut after the planned first epoch and resumed: the plan is read back, not made again
    train(cfg, tmp_path / "cut", progress=False, stop_after_epoch=1)
    planned_before = len(capped_plan)
    resumed = train(RunConfig(), tmp_path / "cut", resume=True, progress=False)
    assert len(capped_plan) == planned_before
    cut_epochs = yaml.safe_load((tmp_path / "cut" / "config.yaml").read_text())["train"]["epochs"]
    assert [h["epoch"] for h in resumed.history] == list(range(1, cut_epochs + 1))
    if cut_epochs == epochs:  # the cut run timed its own first epoch; with the same plan it is the same run
        c, _ = load_checkpoint(tmp_path / "cut" / "last.safetensors")
        for (name, p), q in zip(a.state_dict().items(), c.state_dict().values()):
            assert torch.equal(p, q), name


def test_a_progressive_run_plans_after_its_first_full_size_epoch(pattern_folder, tmp_path, capped_plan):
    """Smaller images make faster epochs: the budget is planned on the first epoch at full size (the third here)."""
    from test_training import progressive_run

    result = train(progressive_run(pattern_folder, epochs=50, time_budget_s=10.0), tmp_path / "r", progress=False)
    (call, *_) = capped_plan
    assert call["done"] == 3 and call["elapsed_s"] >= result.history[2]["elapsed_s"] - result.history[2]["epoch_s"]
    assert len(result.history) == yaml.safe_load((tmp_path / "r" / "config.yaml").read_text())["train"]["epochs"]


def test_the_last_smaller_batch_is_left_out_of_the_steady_rate(pattern_folder, tmp_path, monkeypatch, capped_plan):
    """A compiled model compiles again for the smaller last batch: that step must not set the rate of every epoch."""
    late_s, timings = 100.0, []  # the training clock jumps when the last batch arrives, as a recompile would make it
    clock = {"offset": 0.0}
    real_iterate, real_epoch_seconds = trainer_module.iterate_batches, trainer_module.epoch_seconds
    real_clock = time.perf_counter

    def iterate(split, batch_size, shuffle=False, **kwargs):
        for images, labels in real_iterate(split, batch_size, shuffle=shuffle, **kwargs):
            if shuffle and len(labels) < batch_size:
                clock["offset"] += late_s
            yield images, labels

    def seconds(steps_per_epoch, timed_steps, timed_s, train_s, val_s):
        timings.append({"steps": steps_per_epoch, "timed": timed_steps, "timed_s": timed_s, "train_s": train_s})
        return real_epoch_seconds(steps_per_epoch, timed_steps, timed_s, train_s, val_s)

    monkeypatch.setattr(trainer_module, "iterate_batches", iterate)
    monkeypatch.setattr(trainer_module, "epoch_seconds", seconds)
    monkeypatch.setattr(trainer_module, "time", SimpleNamespace(perf_counter=lambda: real_clock() + clock["offset"]))
    # 120 images in batches of 11: 10 full steps and a last one of 10 images
    train(tiny_run(pattern_folder, epochs=50, batch_size=11, time_budget_s=1000.0), tmp_path / "r", progress=False)
    (t,) = timings
    assert t["steps"] == 11 and t["timed"] == 11 - 1 - trainer_module.WARM_STEPS
    assert t["train_s"] > late_s  # the late step was part of the epoch ...
    assert t["timed_s"] < late_s / 2  # ... but not of the steps that were timed
    assert capped_plan[0]["epoch_s"] < late_s / 2


def test_a_budget_that_is_not_positive_is_refused_before_training(pattern_folder, tmp_path):
    with pytest.raises(ValueError, match="time_budget_s must be a positive"):
        train(tiny_run(pattern_folder, time_budget_s=0.0), tmp_path / "r", progress=False)
    assert not (tmp_path / "r").exists()


def paced_run(pattern_folder, tmp_path, monkeypatch, first_plan: int, pace_s: float, budget_s: float = 100.0, **train_overrides):
    """A budgeted run whose first plan is ``first_plan`` epochs and whose clock then says every epoch took ``pace_s``
    seconds (saving included); returns the result, the re-plans' (epoch, total) and the first plan's clock mark."""
    replans, marks = [], []
    monkeypatch.setattr(trainer_module, "planned_epochs", lambda budget_s, elapsed_s, epoch_s, done_epochs=1: first_plan)
    real_record, real_replanned = trainer_module.epoch_record, trainer_module.replanned_epochs

    def paced(run, epoch, stats, val):
        record = real_record(run, epoch, stats, val)
        if epoch == 0:
            marks.append(run.plan_mark[1])
        else:
            record["elapsed_s"] = marks[0] + pace_s * epoch
        return record

    def replanned(*args):
        total = real_replanned(*args)
        if total is not None:
            replans.append((args[3], total))
        return total

    monkeypatch.setattr(trainer_module, "epoch_record", paced)
    monkeypatch.setattr(trainer_module, "replanned_epochs", replanned)
    cfg = tiny_run(pattern_folder, epochs=50, warmup_epochs=0.5, time_budget_s=budget_s, **train_overrides)
    return train(cfg, tmp_path / "r", progress=False), replans, marks[0]


def test_a_budgeted_run_plans_again_when_its_epochs_slow_down(pattern_folder, tmp_path, monkeypatch):
    """The machine slows down after the plan (6 epochs planned, then 30 s each of a 100-s budget, by the run's
    clock): judged after two epochs, the plan would overrun, so the rest is planned again at that pace, config.yaml
    gets the new total and the schedule ends at it."""
    result, replans, mark_s = paced_run(pattern_folder, tmp_path, monkeypatch, first_plan=6, pace_s=30.0)
    expected = 3 + int((SAFETY * 100 - (mark_s + 60)) // 30)  # 4 unless the first epoch took over 7 s
    assert replans == [(3, expected)]  # judged once two epochs had passed, not after the first
    assert [h["epoch"] for h in result.history] == list(range(1, expected + 1))
    assert yaml.safe_load((tmp_path / "r" / "config.yaml").read_text())["train"]["epochs"] == expected
    peak_lr = yaml.safe_load((tmp_path / "r" / "config.yaml").read_text())["train"]["lr"]
    assert result.history[-1]["lr"] <= 0.05 * peak_lr  # the cosine ran to its end over the new total


def test_a_budgeted_run_plans_more_epochs_when_they_run_faster(pattern_folder, tmp_path, monkeypatch):
    """Epochs run faster than planned (4 planned, then 10 s each of a 100-s budget): whole epochs of the budget would go
    unused, so one more is planned at each check (two epochs apart), while one more still fits."""
    result, replans, mark_s = paced_run(pattern_folder, tmp_path, monkeypatch, first_plan=4, pace_s=10.0)
    assert mark_s < 7  # the first epoch of a tiny run: then 9 epochs would fit (after 5: 50 s, 4 more end at 90 s)
    assert replans == [(3, 5), (5, 6)]  # one at a time, each on two epochs' fresh pace: 4 -> 5 -> 6
    assert len(result.history) == 6
    assert result.history[-1]["elapsed_s"] <= 100  # the run's clock: within the budget


def test_an_epoch_a_re_plan_makes_the_last_is_validated(pattern_folder, tmp_path, monkeypatch):
    """--train.eval_every 2 with 6 epochs planned, then 40 s each of a 100-s budget: judged after epoch 3 (not due
    for validation), nothing more fits, so epoch 3 becomes the last and is validated all the same."""
    result, replans, mark_s = paced_run(pattern_folder, tmp_path, monkeypatch, first_plan=6, pace_s=40.0, eval_every=2)
    assert mark_s < 17 and replans == [(3, 3)]
    assert ["val_acc" in h for h in result.history] == [False, True, True]
    assert read_checkpoint_info(tmp_path / "r" / "last.safetensors")["metrics"]["val_acc"] == result.history[-1]["val_acc"]


def test_the_pace_is_judged_over_whole_validation_intervals():
    assert [judge_epochs(every) for every in (1, 2, 3, 5)] == [2, 2, 3, 5]


def test_a_plan_is_revised_only_when_it_overruns_or_leaves_an_epoch_unused():
    # 5 of 9 epochs done after 50 s at 10 s each: ends at 90 s, 7 s before SAFETY's 97 s: kept
    assert replanned_epochs(100, elapsed_s=50, epoch_s=10, done_epochs=5, planned=9) is None
    assert replanned_epochs(100, elapsed_s=50, epoch_s=10, done_epochs=5, planned=7) == 8  # 27 s unused: 1 more
    assert replanned_epochs(100, elapsed_s=50, epoch_s=10, done_epochs=5, planned=11) == 9  # would end at 110 s
    assert replanned_epochs(100, elapsed_s=50, epoch_s=10, done_epochs=5, planned=10) is None  # 100 s: within budget
    assert replanned_epochs(100, elapsed_s=120, epoch_s=10, done_epochs=5, planned=8) == 5  # over already: stop
