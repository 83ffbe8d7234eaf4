"""The training loop: one epoch at a time, validated, checkpointed and resumable.

Repeatability: the model is initialised from ``seed``, and every epoch re-seeds the data
order, the augmentation and dropout from ``(seed, epoch)``. A run resumed from the state
saved after epoch k therefore continues exactly as the uninterrupted run would (on CPU).
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from vitlab.baselines import build_model, model_flops
from vitlab.config import FinetuneConfig, RunConfig, TrainConfig
from vitlab.data import ImageData, ImageSplit, Preprocess, iterate_batches, load_data, num_batches
from vitlab.device import autocast_context, precision_note, resolve_compile, resolve_device, resolve_precision
from vitlab.model import ViT, ViTConfig
from vitlab.resolve import ConfigError, resolve_config, with_planned_epochs
from vitlab.training.budget import WARM_STEPS, epoch_seconds, judge_epochs, planned_epochs, replanned_epochs
from vitlab.training.checkpoint import RESUME_FILE, load_resume_state, save_checkpoint, save_resume_state
from vitlab.training.distributed import Distributed, local_batch_size, setup_distributed
from vitlab.training.ema import weight_ema
from vitlab.training.evaluation import evaluate
from vitlab.training.optim import build_optimizer, build_scheduler
from vitlab.training.rundir import (
    CONFIG_FILE,
    METRICS_FILE,
    RunExistsError,
    discard_unstarted_run,
    prepare_run_dir,
    read_metrics,
    read_run_config,
    write_metrics,
    write_run_config,
)
from vitlab.training.tracking import STEP_EVERY, Tracker, open_tracker

__all__ = ["CONFIG_FILE", "METRICS_FILE", "RunExistsError", "TrainResult", "evaluate", "read_run_config", "train"]

def epoch_seed(seed: int, epoch: int) -> int:
    return seed * 1_000_003 + epoch


def preprocessing_info(data: ImageData, cfg: RunConfig) -> dict[str, Any]:
    """What ``predict`` must do to a new image to match training."""
    return {"mean": list(data.mean), "std": list(data.std), "image_size": list(cfg.model.img_size),
            "in_chans": cfg.model.in_chans, "interpolation": cfg.data.interpolation, "crop_pct": cfg.data.crop_pct,
            "crop_mode": cfg.data.crop_mode, "dataset": data.name}


@dataclass
class TrainResult:
    run_dir: Path
    history: list[dict[str, Any]]
    best_val_acc: float

    @property
    def final(self) -> dict[str, Any]:
        return self.history[-1] if self.history else {}


def train(cfg: RunConfig | None, run_dir: str | Path, resume: bool = False, progress: bool = True,
          stop_after_epoch: int | None = None, data: ImageData | None = None, epochs: int | None = None) -> TrainResult:
    """Train ``cfg`` into ``run_dir`` (or continue it with ``resume=True``; ``epochs`` then trains a finished
    run longer, the cosine schedule re-planned over the new total from the step it reached).

    ``cfg`` goes through :func:`vitlab.resolve.resolve_config` first (the head follows the data; every
    value is checked before anything is written). ``stop_after_epoch`` ends the session early, as a kill
    after that epoch would. Started by torchrun, every process runs this with its share of each batch
    (see :mod:`vitlab.training.distributed`); rank 0 alone writes the run directory and prints.
    """
    called = time.perf_counter()  # a time budget counts from here: loading the data is part of the run
    run_dir = Path(run_dir)
    cfg = resumed_run_config(run_dir, epochs) if resume else resolve_config(cfg)
    new_dir = not resume and not (run_dir.is_dir() and any(run_dir.iterdir()))
    run = None
    try:
        run = start_run(cfg, run_dir, resume, data, progress)
        val = None
        plan_at = cfg.train.progressive_epochs if cfg.train.progressive_res else 0  # the first full-size epoch
        plan_budget = cfg.train.time_budget_s is not None and run.start_epoch <= plan_at  # a resumed run keeps its plan
        epoch = run.start_epoch
        while epoch < run.cfg.train.epochs and (stop_after_epoch is None or epoch < stop_after_epoch):
            timing = plan_budget and epoch == plan_at
            stats = train_epoch(run, epoch, time_steps=timing)
            val = validate(run) if validation_due(run.cfg.train, epoch) else None
            if timing:
                plan_epochs(run, stats, called, done_epochs=epoch + 1)
                plan_budget = False
            record = epoch_record(run, epoch, stats, val)
            if run.planned_epoch_s and epoch > run.start_epoch:  # later epochs: follow the machine's real pace
                replan_if_drifted(run, record)
            if val is None and validation_due(run.cfg.train, epoch):  # a re-plan made this epoch the last
                val = validate(run)
                record.update(val_loss=val["loss"], val_acc=val["acc"])
            save_epoch(run, record)
            epoch += 1
    except BaseException as exc:  # a failed start leaves nothing behind (Ctrl-C keeps it: --resume starts it again)
        if run is not None:
            run.tracker.close(finished=False)
        if isinstance(exc, Exception) and new_dir and (run is None or not run.history) and int(os.environ.get("RANK", "0")) == 0:
            discard_unstarted_run(run_dir)
        raise
    finish_run(run, val)
    return TrainResult(run_dir, run.history, run.best_acc)


@dataclass
class Run:
    """One training session: the frozen configuration and everything built from it."""

    cfg: RunConfig
    run_dir: Path
    ctx: Distributed
    device: torch.device
    data: ImageData
    model: torch.nn.Module  # the network whose weights train
    step_model: torch.nn.Module  # what one step runs: the model, or its head on cached features
    eval_model: torch.nn.Module  # what is validated: the model or the moving average of its weights (or their heads)
    saved_model: torch.nn.Module  # what the checkpoints hold
    optimizer: torch.optim.Optimizer
    scheduler: Any
    ema: Any
    train_split: ImageSplit
    val_split: ImageSplit
    preprocess: Any
    eval_preprocess: Any
    steps_per_epoch: int
    info: dict[str, Any]
    progress: bool
    history: list[dict[str, Any]] = field(default_factory=list)
    best_acc: float = -1.0
    start_epoch: int = 0
    started: float = 0.0
    tracker: Tracker = field(default_factory=Tracker)
    compile_step: bool = False  # --train.compile as it can be honoured here (resolve_compile)
    compiled: torch.nn.Module | None = None
    precision: str = "fp32"  # --train.precision as it resolves for this device and step (resolve_precision)
    ddp: tuple[torch.nn.Module, bool] | None = None  # the DDP wrapper and the trainable set it was made for
    planned_epoch_s: float = 0.0  # a time budget's plan: the seconds per epoch it assumed
    plan_mark: tuple[int, float] = (0, 0.0)  # epochs done and run time (s) when it was made


def resumed_run_config(run_dir: Path, epochs: int | None) -> RunConfig:
    """The configuration a run directory was started with, checked; ``epochs``: train it that long in all."""
    if not (run_dir / CONFIG_FILE).exists():
        raise FileNotFoundError(f"cannot resume: {run_dir} holds no {CONFIG_FILE}; is it a vitlab run directory?")
    cfg = read_run_config(run_dir)
    if epochs is None or epochs == cfg.train.epochs:
        return cfg
    done = len(read_metrics(run_dir))
    if epochs <= done:
        raise ConfigError(f"--train.epochs {epochs}: {run_dir} has already trained {done} epochs; give a larger number "
                          "to train it longer")
    return with_planned_epochs(cfg, epochs)


def start_run(cfg: RunConfig, run_dir: Path, resume: bool, data: ImageData | None, progress: bool) -> Run:
    """Everything a session needs, in order: processes and device, the data, the run directory, the model, the
    optimiser and schedule, the saved state of a resumed run, and (linear probe) the features."""
    tc, ft = cfg.train, cfg.finetune
    state = resume_state(run_dir) if resume else None  # refuses before anything is written
    if tc.threads:
        torch.set_num_threads(tc.threads)
    ctx = setup_distributed(tc.device)
    device = torch.device("cuda", ctx.local_rank) if ctx.enabled and torch.cuda.is_available() and tc.device in (
        "auto", "cuda") else resolve_device(tc.device)
    progress = progress and ctx.is_main
    local_batch_size(tc.batch_size, ctx)  # the global batch must split evenly
    model, notes = build_run_model(cfg, fresh=state is None)  # fine-tuning: the weights are read first
    if note := precision_note(tc.precision, device):
        notes["precision"] = note
    compile_step, note = resolve_compile(tc.compile, device)
    if note:
        notes["compile"] = note
    data = data or load_data(cfg.data, image_size=cfg.model.img_size, seed=tc.seed, progress=progress,
                             channels=cfg.model.in_chans)
    if data.num_classes != cfg.model.num_classes:
        raise ConfigError(f"{data.name} has {data.num_classes} classes but the model's head has {cfg.model.num_classes} "
                          f"(model.num_classes in {run_dir / CONFIG_FILE if resume else 'the configuration'})")
    if ctx.is_main:
        prepare_run_dir(run_dir, cfg, resume)
    ctx.barrier()
    model = model.to(device)
    optimizer = build_optimizer(model, tc, ft)
    ema = weight_ema(model, tc.ema_decay) if tc.ema_decay else None
    steps_per_epoch = num_batches(data.train, tc.batch_size, ctx.world_size)
    preprocess = Preprocess(data.mean, data.std, cfg.model.in_chans, cfg.model.img_size, cfg.data.augment,
                            resize_mode=cfg.data.interpolation, erase_prob=cfg.data.random_erasing)
    eval_preprocess = Preprocess(data.mean, data.std, cfg.model.in_chans, cfg.model.img_size,
                                 resize_mode=cfg.data.interpolation)
    saved_model = ema.module if ema is not None else model
    info = {"classes": data.classes, "params": model.num_params(), "flops": model_flops(model),
            "preprocessing": preprocessing_info(data, cfg), "run_config": cfg.to_dict(), "data_notes": {**data.notes, **notes}}
    run = Run(cfg, run_dir, ctx, device, data, model, model, saved_model, saved_model, optimizer, None, ema, data.train,
              data.val, preprocess, eval_preprocess, steps_per_epoch, info, progress)
    if cfg.uses_feature_cache:
        use_cached_features(run)
    run.scheduler = scheduler_for(run)
    if state is not None:
        restore_state(run, state)
    if ctx.is_main:
        write_metrics(run_dir, run.history)  # drops any line written after the saved state
    run.started = time.perf_counter() - (run.history[-1]["elapsed_s"] if run.history else 0.0)
    if ctx.is_main:
        run.tracker = open_tracker(tc.tracker, run_dir, cfg.to_dict(), tc.tracker_project)
    run.compile_step = compile_step
    run.precision = run.info["precision"] = resolve_precision(tc.precision, device, compiled=compile_step)
    run.compiled = compile_for(run.step_model, tc) if compile_step and not ctx.enabled else None
    if progress:
        announce(run, notes)
    return run


def resume_state(run_dir: Path) -> dict[str, Any] | None:
    """The saved training state; a run that finished epochs but lost it is refused (starting over would
    replace its checkpoints and metrics), one that never finished an epoch starts from the beginning."""
    state = load_resume_state(run_dir)
    done = len(read_metrics(run_dir))
    if state is None and (done or (run_dir / "best.safetensors").exists()):
        raise ConfigError(f"cannot resume {run_dir}: it holds {done} finished epochs but not the training state "
                          f"({RESUME_FILE}) needed to continue them, and starting over would replace its checkpoints and "
                          f"metrics; start a new run (another --run_dir), or fine-tune from {run_dir / 'best.safetensors'}")
    return state


def build_run_model(cfg: RunConfig, fresh: bool) -> tuple[torch.nn.Module, dict[str, str]]:
    """A new model: the pretrained weights with a new head (fine-tuning), else seeded random weights.
    ``fresh=False`` (resuming): random weights of the right shape, to be overwritten by the saved state."""
    ft = cfg.finetune
    if ft is None or not fresh:
        torch.manual_seed(cfg.train.seed)
        return build_model(cfg.model, cfg.arch), {}
    from vitlab.pretrained import load_pretrained

    model, pinfo = load_pretrained(ft.pretrained, file=ft.pretrained_file, img_size=ft.img_size,
                                   drop_path_rate=ft.drop_path_rate)
    model.reset_classifier(cfg.model.num_classes)
    if model.cfg != cfg.model:
        raise ConfigError(f"the weights {ft.pretrained} describe another architecture than the resolved configuration "
                          f"({model.cfg} vs {cfg.model}); were they replaced while the run started?")
    notes = {"pretrained": f"weights {pinfo.name} ({pinfo.source_format} layout) from {pinfo.file}"}
    notes.update({f"change_{i}": change for i, change in enumerate(pinfo.changes)})
    notes["head"] = f"new zero-initialised head for {cfg.model.num_classes} classes"
    return model, notes


def use_cached_features(run: Run) -> None:
    """Linear probe without augmentation: the frozen backbone sees each image once; steps train the head on features."""
    tc = run.cfg.train
    run.train_split = extract_features(run.model, run.data.train, run.eval_preprocess, tc, run.device, run.progress, "train")
    run.val_split = extract_features(run.model, run.data.val, run.eval_preprocess, tc, run.device, run.progress, "val")
    run.step_model, run.eval_model = run.model.head, run.saved_model.head
    run.preprocess = run.eval_preprocess = _features_as_input
    run.steps_per_epoch = num_batches(run.train_split, tc.batch_size, run.ctx.world_size)


def restore_state(run: Run, state: dict[str, Any]) -> None:
    """Continue from ``resume.pt``: weights, optimiser, schedule (re-planned when the run now has more epochs), history."""
    run.model.load_state_dict(state["model"])
    run.optimizer.load_state_dict(state["optimizer"])
    run.scheduler.load_state_dict(state["scheduler"])
    run.history, run.best_acc, run.start_epoch = state["history"], state["best_val_acc"], state["epoch"]
    saved_epochs = state.get("planned_epochs")
    if saved_epochs is not None and saved_epochs != run.cfg.train.epochs:  # trained longer: the cosine over the new total
        run.scheduler = scheduler_for(run, steps_done=run.scheduler.last_epoch)
        if run.ctx.is_main:
            write_run_config(run.run_dir, run.cfg)
    if run.ema is not None:
        if "ema" not in state:
            raise ValueError(f"cannot resume {run.run_dir} with --train.ema_decay: its saved state has no weight average")
        run.ema.load_state_dict(state["ema"])


def announce(run: Run, notes: dict[str, str]) -> None:
    ft, data = run.cfg.finetune, run.data
    where = f"resuming after epoch {run.start_epoch}" if run.start_epoch else "new run"
    source = f" | from {ft.pretrained} ({ft.mode})" if ft is not None else ""
    tqdm.write(f"vitlab: {where} in {run.run_dir} | {data.name}: {len(data.train)} train / {len(data.val)} val "
               f"images, {data.num_classes} classes | model {run.model.num_params():,} params, "
               f"{run.info['flops'] / 1e6:.1f} MFLOPs/image | device {run.device}, {run.precision}{source}")
    for note in notes.values():
        tqdm.write(f"  {note}")


@dataclass
class EpochStats:
    loss_sum: torch.Tensor
    correct: torch.Tensor
    seen: int
    started: float
    train_s: float
    train_end: float
    warm_at: float | None  # the time budget's timing: after the first WARM_STEPS steps ...
    steady_end: float | None  # ... and before the last, smaller batch


def train_epoch(run: Run, epoch: int, time_steps: bool) -> EpochStats:
    """One pass over the training split; ``time_steps``: record the steady rate a time budget plans with."""
    tc, ctx, device = run.cfg.train, run.ctx, run.device
    seed = epoch_seed(tc.seed, epoch)
    torch.manual_seed(seed + 7919 * ctx.rank)  # dropout and drop path (own masks per process)
    order = torch.Generator().manual_seed(seed)  # the same global order in every process
    augment_rng = torch.Generator().manual_seed(seed + 1 + 7919 * ctx.rank)
    runner = step_runner(run, epoch)
    loss_sum = torch.zeros((), device=device)
    correct = torch.zeros((), device=device, dtype=torch.long)
    seen, epoch_start, warm_at, steady_end = 0, time.perf_counter(), None, None
    bar = tqdm(iterate_batches(run.train_split, tc.batch_size, shuffle=True, generator=order,
                               num_workers=run.cfg.data.num_workers, shard=(ctx.rank, ctx.world_size),
                               pin_memory=device.type == "cuda"),
               total=run.steps_per_epoch, desc=f"epoch {epoch + 1}/{tc.epochs}", leave=False, disable=not run.progress,
               dynamic_ncols=True)
    side = progressive_size(tc, run.cfg.model, epoch)
    size = None if side is None else (side, side)
    for step, (images, labels) in enumerate(bar):
        x = run.preprocess(images.to(device, non_blocking=True), train=True, generator=augment_rng, size=size)
        y = labels.to(device, non_blocking=True)
        logits, loss = train_step(run, runner, x, y, epoch, step)
        loss_sum += loss.detach() * len(y)
        correct += (logits.argmax(1) == y).sum()
        seen += len(y)
        if time_steps and step + 1 == WARM_STEPS:
            warm_at = _synchronized_time(device)
        if time_steps and warm_at is not None and step + 2 == run.steps_per_epoch:  # the last batch is not timed:
            steady_end = _synchronized_time(device)  # a smaller one makes a compiled model compile again
        if step % STEP_EVERY == 0 and run.tracker.active:
            lr = max(g["lr"] for g in run.optimizer.param_groups)
            run.tracker.log_step(epoch * run.steps_per_epoch + step, {"loss": loss.item(), "lr": lr, "images_per_s": seen / max(
                1e-9, time.perf_counter() - epoch_start)})
        if run.progress and (step % STEP_EVERY == 0 or step == run.steps_per_epoch - 1):
            rate = seen / max(1e-9, time.perf_counter() - epoch_start)
            bar.set_postfix(loss=f"{loss_sum.item() / seen:.4f}", acc=f"{correct.item() / seen:.4f}",
                            lr=f"{max(g['lr'] for g in run.optimizer.param_groups):.2e}", img_s=f"{rate:.0f}")
    bar.close()
    train_end = _synchronized_time(device) if time_steps else time.perf_counter()
    if ctx.enabled:  # the epoch's numbers over all processes
        loss_sum, correct, seen_all = ctx.all_sum(loss_sum, correct, torch.tensor(float(seen)))
        seen = int(seen_all.item())
    return EpochStats(loss_sum, correct, seen, epoch_start, train_end - epoch_start, train_end, warm_at, steady_end)


def step_runner(run: Run, epoch: int) -> torch.nn.Module:
    """What runs this epoch's steps: freezes or unfreezes the backbone (staged fine-tuning), and wraps the step
    model for DDP again only when what is trainable changed (compiled once per wrap)."""
    frozen = backbone_frozen(run.cfg.finetune, epoch)
    set_backbone_trainable(run.model, not frozen)
    run.model.train(not frozen)  # a frozen backbone runs as at inference: no dropout, no drop path
    if not run.ctx.enabled:
        return run.compiled if run.compiled is not None else run.step_model
    if run.ddp is None or run.ddp[1] != frozen:
        run.ddp = (_data_parallel(run.step_model, run.device, run.cfg.train if run.compile_step else None), frozen)
    return run.ddp[0]


def train_step(run: Run, runner: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, epoch: int,
               step: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Forward, loss, backward, clipping, optimiser and schedule step, weight average: (logits, loss)."""
    tc = run.cfg.train
    with autocast_context(run.device, run.precision):
        logits = runner(x)
        loss = F.cross_entropy(logits.float(), y, label_smoothing=tc.label_smoothing)
    if not torch.isfinite(loss):
        raise FloatingPointError(f"loss became {loss.item()} at epoch {epoch + 1}, step {step}; lower --train.lr "
                                 f"(now {tc.lr}) or enable --train.grad_clip")
    run.optimizer.zero_grad(set_to_none=True)
    loss.backward()
    if tc.grad_clip > 0:
        torch.nn.utils.clip_grad_norm_(run.model.parameters(), tc.grad_clip)
    run.optimizer.step()
    run.scheduler.step()
    if run.ema is not None:
        run.ema.update_parameters(run.model)
    return logits, loss


def validate(run: Run, whole: bool = False) -> dict[str, Any]:
    """Loss, accuracy and confusion matrix on the validation split. Under torchrun each process evaluates every
    world_size-th image and the numbers are summed over the processes (per-image predictions: ``whole=True``)."""
    tc, ctx = run.cfg.train, run.ctx
    if whole or not ctx.enabled:
        return evaluate(run.eval_model, run.val_split, run.eval_preprocess, tc.eval_batch_size, run.device, run.precision,
                        run.data.num_classes)
    share = run.val_split.subset(torch.arange(ctx.rank, len(run.val_split), ctx.world_size))
    val = evaluate(run.eval_model, share, run.eval_preprocess, tc.eval_batch_size, run.device, run.precision,
                   run.data.num_classes)
    confusion = ctx.sum_tensor(val["confusion"], run.device)
    loss_sum, = ctx.all_sum(torch.tensor(val["loss"] * len(share), device=run.device))
    seen = int(confusion.sum())
    return {"loss": loss_sum.item() / max(1, seen), "acc": confusion.diag().sum().item() / max(1, seen),
            "confusion": confusion}


def plan_epochs(run: Run, stats: EpochStats, called: float, done_epochs: int = 1) -> None:
    """After the first (full-size) epoch of a time-budgeted run, ``done_epochs`` finished: as many epochs as fit, the
    schedule over them all, the plan written to config.yaml."""
    timed = run.steps_per_epoch - 1 - WARM_STEPS if stats.steady_end is not None else 0
    timed_s = stats.steady_end - stats.warm_at if timed > 0 else 0.0
    epoch_s = epoch_seconds(run.steps_per_epoch, timed, timed_s, stats.train_s, time.perf_counter() - stats.train_end)
    # every process must plan the same number: the times averaged over the processes
    epoch_s, elapsed_s, mark_s = run.ctx.mean(epoch_s, time.perf_counter() - called, time.perf_counter() - run.started)
    tc = run.cfg.train
    set_planned_epochs(run, planned_epochs(tc.time_budget_s, elapsed_s, epoch_s, done_epochs=done_epochs))
    run.planned_epoch_s, run.plan_mark = epoch_s, (done_epochs, mark_s)
    if run.progress:
        tqdm.write(f"time budget {tc.time_budget_s:.0f} s: {elapsed_s:.0f} s used, {epoch_s:.1f} s per epoch "
                   f"from now on -> {run.cfg.train.epochs} epochs in all")


def replan_if_drifted(run: Run, record: dict[str, Any]) -> None:
    """After a later epoch of a time-budgeted run: judge the plan on the pace since it was made (the run's clock over
    the epochs since, checkpoints included; another job on the machine, thermal limits, a faster compiled step), and
    when it would overrun the budget, plan the remaining epochs again at that pace, and when it would leave a whole
    epoch unused, plan one more (:func:`vitlab.training.budget.replanned_epochs`); the schedule follows the new total."""
    [elapsed_s] = run.ctx.mean(record["elapsed_s"])  # every process must plan the same number
    mark_epoch, mark_s = run.plan_mark
    if record["epoch"] - mark_epoch < judge_epochs(run.cfg.train.eval_every):  # one epoch's pace is too noisy
        return
    epoch_s = (elapsed_s - mark_s) / (record["epoch"] - mark_epoch)  # the real pace since the plan, saving included
    before = run.cfg.train.epochs
    epochs = replanned_epochs(run.cfg.train.time_budget_s, elapsed_s, epoch_s, record["epoch"], before)
    if epochs is None:
        return
    run.planned_epoch_s, run.plan_mark = epoch_s, (record["epoch"], elapsed_s)
    if epochs != before:
        set_planned_epochs(run, epochs)
        if run.progress:
            tqdm.write(f"time budget: epochs now take {epoch_s:.1f} s (planned {before} epochs) -> {epochs} epochs in all")


def set_planned_epochs(run: Run, epochs: int) -> None:
    """The run planned for ``epochs`` in all: configuration (written to config.yaml), schedule from the step reached."""
    run.cfg = with_planned_epochs(run.cfg, epochs)
    run.scheduler = scheduler_for(run, steps_done=run.scheduler.last_epoch)
    run.info["run_config"] = run.cfg.to_dict()
    if run.ctx.is_main:
        write_run_config(run.run_dir, run.cfg)


def scheduler_for(run: Run, steps_done: int = 0):
    """The run's learning-rate schedule from step ``steps_done``, progressive resizing's smaller rates included."""
    tc = run.cfg.train
    scales = [progressive_lr_scale(tc, run.cfg.model, epoch) for epoch in range(tc.progressive_epochs)]
    return build_scheduler(run.optimizer, tc, run.steps_per_epoch, run.cfg.finetune, steps_done=steps_done,
                           epoch_scales=scales)


def progressive_lr_scale(tc: TrainConfig, model: ViTConfig, epoch: int) -> float:
    """The learning-rate multiplier of epoch ``epoch`` under progressive resizing: ``progressive_lr_scale`` at the
    start size, rising geometrically with the image side to 1 at full size."""
    side = progressive_size(tc, model, epoch)
    if side is None:
        return 1.0
    full = model.img_size[0]
    return tc.progressive_lr_scale ** ((full - side) / (full - tc.progressive_res))


def progressive_size(tc: TrainConfig, model: ViTConfig, epoch: int) -> int | None:
    """The image side epoch ``epoch`` (from 0) trains at under ``--train.progressive_res``: from that size at epoch 0
    up in whole patches, linearly, to ``img_size`` at epoch ``progressive_epochs``; None at full size."""
    if not tc.progressive_res or epoch >= tc.progressive_epochs:
        return None
    side, patch = model.img_size[0], model.patch_size[0]
    rising = tc.progressive_res + (side - tc.progressive_res) * epoch / tc.progressive_epochs
    return int(rising // patch) * patch


def validation_due(tc: TrainConfig, epoch: int) -> bool:
    """Whether epoch ``epoch`` (from 0) is validated: every ``eval_every``-th one and the last one."""
    return (epoch + 1) % tc.eval_every == 0 or epoch + 1 >= tc.epochs


def epoch_record(run: Run, epoch: int, stats: EpochStats, val: dict[str, Any] | None) -> dict[str, Any]:
    """One epoch's metrics (``val_loss`` and ``val_acc`` only when it was validated)."""
    record = {"epoch": epoch + 1, "train_loss": stats.loss_sum.item() / stats.seen, "train_acc": stats.correct.item() / stats.seen}
    if val is not None:
        record.update(val_loss=val["loss"], val_acc=val["acc"])
    return {**record, "lr": max(g["lr"] for g in run.optimizer.param_groups), "train_images_per_s": stats.seen / stats.train_s,
            "epoch_s": time.perf_counter() - stats.started, "elapsed_s": time.perf_counter() - run.started}


def save_epoch(run: Run, record: dict[str, Any]) -> None:
    """History and best accuracy; on rank 0 the checkpoints, the resume state, metrics.jsonl and TensorBoard."""
    run.history.append(record)
    is_best = record.get("val_acc", -1.0) > run.best_acc  # among the validated epochs
    run.best_acc = max(run.best_acc, record.get("val_acc", -1.0))
    if not run.ctx.is_main:
        return  # rank 0 alone writes the run directory
    ckpt_info = {**run.info, "epoch": record["epoch"], "metrics": record}
    save_checkpoint(run.run_dir / "last.safetensors", run.saved_model, ckpt_info)
    if is_best:
        save_checkpoint(run.run_dir / "best.safetensors", run.saved_model, ckpt_info)
    state = {"model": run.model.state_dict(), "optimizer": run.optimizer.state_dict(),
             "scheduler": run.scheduler.state_dict(), "epoch": record["epoch"], "history": run.history,
             "best_val_acc": run.best_acc, "planned_epochs": run.cfg.train.epochs}
    if run.ema is not None:
        state["ema"] = run.ema.state_dict()
    save_resume_state(run.run_dir, state)
    write_metrics(run.run_dir, run.history)
    run.tracker.log_epoch(record["epoch"] * run.steps_per_epoch, record)
    if run.progress:
        val = (f"val loss {record['val_loss']:.4f} acc {record['val_acc']:.4f}{' *' if is_best else '  '}"
               if "val_acc" in record else "not validated" + " " * 20)
        tqdm.write(
            f"epoch {record['epoch']:>3}/{run.cfg.train.epochs} | train loss {record['train_loss']:.4f} acc "
            f"{record['train_acc']:.4f} | {val} | {record['train_images_per_s']:.0f} img/s | "
            f"{record['epoch_s']:.1f}s (total {record['elapsed_s']:.0f}s)"
        )


def finish_run(run: Run, val: dict[str, Any] | None) -> None:
    """A finished run draws its pictures and gives them and the best checkpoint to the tracker; the tracker and
    the process group are closed."""
    run.ctx.barrier()
    finished = bool(run.history) and run.history[-1]["epoch"] == run.cfg.train.epochs
    if run.ctx.is_main and finished:
        if val is None or run.ctx.enabled:  # resumed after the last epoch was saved, or each process saw a share
            val = validate(run, whole=True)
        from vitlab.insight.run_figures import write_run_figures

        figures = write_run_figures(run.run_dir, run.history, run.data.classes, val, run.data.val,
                                    title=f"{run.data.name}: {run.run_dir.name}")
        run.tracker.log_files({**figures, "best": run.run_dir / "best.safetensors"})
    run.tracker.close(finished)
    if run.ctx.enabled:
        torch.distributed.destroy_process_group()


def _synchronized_time(device: torch.device) -> float:
    """``perf_counter()`` once the device has finished the work queued so far (CUDA runs asynchronously)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter()


def backbone_frozen(ft: FinetuneConfig | None, epoch: int) -> bool:
    """Linear probe: always; staged: during the first ``head_epochs`` epochs."""
    if ft is None:
        return False
    return ft.mode == "linear" or (ft.mode == "staged" and epoch < ft.head_epochs)


def set_backbone_trainable(model: ViT, trainable: bool) -> None:
    for name, param in model.named_parameters():
        param.requires_grad_(trainable or name.startswith("head."))


def _features_as_input(x: torch.Tensor, train: bool = False, generator: torch.Generator | None = None,
                       size: tuple[int, int] | None = None) -> torch.Tensor:
    return x


def compile_for(module: torch.nn.Module, tc: TrainConfig) -> torch.nn.Module:
    """``module`` through ``torch.compile``. Progressive resizing compiles one static graph per image size: a graph
    dynamic in the size ran slower (473 against 555 img/s at 24 pixels, CIFAR-10's 2-core hour) and, in torch 2.14,
    cannot compile the backward of the antialiased position-embedding resampling."""
    return torch.compile(module, dynamic=False if tc.progressive_res else None)


def _data_parallel(module: torch.nn.Module, device: torch.device, compiling: TrainConfig | None) -> torch.nn.Module:
    """``module`` in DistributedDataParallel (gradients averaged over the processes), compiled for ``compiling`` if given."""
    from torch.nn.parallel import DistributedDataParallel

    wrapped = DistributedDataParallel(module, device_ids=[device.index] if device.type == "cuda" else None)
    return compile_for(wrapped, compiling) if compiling is not None else wrapped


@torch.no_grad()
def extract_features(model: ViT, split: ImageSplit, preprocess: Preprocess, tc: TrainConfig, device: torch.device,
                     progress: bool, name: str) -> ImageSplit:
    """Pooled backbone features (N, D) of every image: a frozen backbone needs to see each image once."""
    model.eval()
    features = []
    for images, _ in tqdm(iterate_batches(split, tc.eval_batch_size), total=num_batches(split, tc.eval_batch_size),
                          desc=f"features ({name}, once)", leave=False, disable=not progress):
        with autocast_context(device, tc.precision):
            tokens = model.forward_features(preprocess(images.to(device, non_blocking=True)))
            features.append(model.forward_head(tokens, pre_logits=True).float())
    return ImageSplit(split.labels, images=torch.cat(features))


