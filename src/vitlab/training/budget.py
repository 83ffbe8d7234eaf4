"""Train for a wall-time budget: after the first epoch, plan as many epochs as fit.

A recipe measured on one machine ("16 epochs take an hour") overshoots on a slower one and
wastes time on a faster one. With ``--train.time_budget_s`` the first epoch is timed, its rate
taken after the first steps (which compile kernels and warm caches) and before the last one (a
smaller last batch makes a compiled model compile again), and the number of epochs
becomes what fits in the rest of the budget; the cosine schedule then runs over exactly those
epochs. When a later epoch's time drifts more than 10% from the plan's, the rest is planned again from it
(:func:`vitlab.training.trainer.replan_if_drifted`). The plan is written to the run's ``config.yaml``, so a resumed
run keeps it. When the
warm-up lasts at least the first epoch, that epoch's learning rates do not depend on the total,
and the run is the same as one started with ``--train.epochs N``.
"""

from __future__ import annotations

import math

# Steps of the first epoch left out of its rate (compilation, first-touch allocations).
WARM_STEPS = 5
# Plan for this share of the time left: the rest absorbs the machine's speed drifting and the
# work after the last epoch (checkpoints, the run's figures).
SAFETY = 0.97


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
