"""Train for a wall-time budget: after the first epoch, plan as many epochs as fit.

A recipe measured on one machine ("16 epochs take an hour") overshoots on a slower one and
wastes time on a faster one. With ``--train.time_budget_s`` the first epoch is timed, its rate
taken after the first steps (which compile kernels and warm caches) and before the last one (a
smaller last batch makes a compiled model compile again), and the number of epochs
becomes what fits in the rest of the budget; the cosine schedule then runs over exactly those
epochs. After later epochs the plan is checked against the pace measured since it was made: when it would end
past the budget, the rest is planned again at that pace; when it would leave a whole epoch of the budget unused,
one more epoch is planned (:func:`replanned_epochs`, called by
:func:`vitlab.training.trainer.replan_if_drifted`). The plan is written to the run's ``config.yaml``, so a resumed
run keeps it. When the warm-up lasts at least the first epoch, that epoch's learning rates do not depend on the
total, and the run is the same as one started with ``--train.epochs N``.
"""

from __future__ import annotations

import math

# Steps of the first epoch left out of its rate (compilation, first-touch allocations).
WARM_STEPS = 5
# Plan for this share of the time left: the rest absorbs the machine's speed drifting and the
# work after the last epoch (checkpoints, the run's figures).
SAFETY = 0.97
# A plan is judged on the pace of at least this many epochs since it was made (one epoch's time varies by ~5%, which
# over 15 epochs left is most of an epoch).
JUDGE_EPOCHS = 2


def judge_epochs(eval_every: int = 1) -> int:
    """Epochs a plan's pace is measured over: at least ``JUDGE_EPOCHS``, in whole multiples of ``eval_every`` so that
    the window holds the share of validated epochs the rest of the run will have (a CIFAR-10 hour validated every third
    epoch: two-epoch windows read 194, 165 and 175 s in turn while its epochs averaged 170 s)."""
    return eval_every * math.ceil(JUDGE_EPOCHS / eval_every)


def epoch_seconds(steps_per_epoch: int, timed_steps: int, timed_s: float, train_s: float, val_s: float) -> float:
    """One more epoch: the steady time per step (``timed_s`` over ``timed_steps``) times the steps,
    plus validation; the whole measured training time when no steps could be timed."""
    train = timed_s / timed_steps * steps_per_epoch if timed_steps > 0 else train_s
    return train + val_s


def planned_epochs(budget_s: float, elapsed_s: float, epoch_s: float, done_epochs: int = 1) -> int:
    """Epochs in all, ``done_epochs`` of them finished ``elapsed_s`` seconds into the run, when each
    further epoch takes ``epoch_s`` seconds and the run must end within ``budget_s``."""
    if budget_s <= 0 or epoch_s <= 0:
        raise ValueError(f"a time budget and an epoch's time must be positive (budget {budget_s} s, epoch {epoch_s} s)")
    more = math.floor(SAFETY * max(0.0, budget_s - elapsed_s) / epoch_s)
    return done_epochs + more


def replanned_epochs(budget_s: float, elapsed_s: float, epoch_s: float, done_epochs: int, planned: int) -> int | None:
    """After a later epoch, at the pace ``epoch_s`` measured since the plan: the new total when the plan of
    ``planned`` epochs would end past ``budget_s`` (as many as end by ``SAFETY * budget_s``, the first plan's
    margin kept), or one more when it would end a whole epoch before that; ``None`` while it fits. Epochs are
    added one at a time, each on a fresh measurement: epochs tend to slow as a run goes on, and an early fast
    pace that promised two more epochs took one back later (17 -> 19 -> 18 in a CIFAR-10 hour)."""
    target_s = SAFETY * budget_s
    end_s = elapsed_s + (planned - done_epochs) * epoch_s
    if end_s <= budget_s and target_s - end_s < epoch_s:
        return None
    return min(planned + 1, done_epochs + max(0, math.floor((target_s - elapsed_s) / epoch_s)))
