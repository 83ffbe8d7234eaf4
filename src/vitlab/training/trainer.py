"""The training loop: one epoch at a time, validated, checkpointed and resumable.

Repeatability: the model is initialised from ``seed``, and every epoch re-seeds the data
order, the augmentation and dropout from ``(seed, epoch)``. A run resumed from the state
saved after epoch k therefore continues exactly as the uninterrupted run would (on CPU).
"""

from __future__ import annotations

import contextlib
import copy
import itertools
import json
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
import yaml
from tqdm.auto import tqdm

from vitlab.baselines import build_model, model_flops
from vitlab.config import FinetuneConfig, RunConfig, TrainConfig
from vitlab.data import ImageData, ImageSplit, Preprocess, iterate_batches, load_data, num_batches
from vitlab.model import ViT
from vitlab.training.budget import WARM_STEPS, epoch_seconds, planned_epochs
from vitlab.training.checkpoint import (
    atomic_write_text,
    load_resume_state,
    save_checkpoint,
    save_resume_state,
)
from vitlab.training.distributed import local_batch_size, setup_distributed
from vitlab.training.ema import weight_ema
from vitlab.training.optim import build_optimizer, build_scheduler

CONFIG_FILE = "config.yaml"
METRICS_FILE = "metrics.jsonl"


class RunExistsError(FileExistsError):
    """The run directory already holds a run."""


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def autocast_context(device: torch.device, precision: str):
    use_bf16 = precision == "bf16" or (precision == "auto" and device.type == "cuda")
    if use_bf16:
        return torch.autocast(device_type=device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def epoch_seed(seed: int, epoch: int) -> int:
    return seed * 1_000_003 + epoch


def preprocessing_info(data: ImageData, cfg: RunConfig) -> dict[str, Any]:
    """What ``predict`` must do to a new image to match training."""
    return {"mean": list(data.mean), "std": list(data.std), "image_size": list(cfg.model.img_size),
            "in_chans": cfg.model.in_chans, "interpolation": cfg.data.interpolation, "crop_pct": cfg.data.crop_pct,
            "dataset": data.name}


@torch.no_grad()
def evaluate(model: ViT, split: ImageSplit, preprocess: Preprocess, batch_size: int, device: torch.device,
             precision: str = "auto", num_classes: int | None = None, progress: bool = False,
             flip_tta: bool = False) -> dict[str, Any]:
    """Loss, accuracy, the confusion matrix (rows: true class, columns: predicted), and each image's
    prediction and its probability (``predicted``, ``confidence``, in split order).

    ``flip_tta`` (test-time augmentation) classifies each image and its mirror image and averages
    the two probability vectors; only meaningful for a model trained with horizontal flips.
    """
    model.eval()
    num_classes = num_classes or model.num_classes
    confusion = torch.zeros(num_classes, num_classes, dtype=torch.long)
    total_loss, seen, predicted, confidence = 0.0, 0, [], []
    batches = iterate_batches(split, batch_size)
    for images, labels in tqdm(batches, total=num_batches(split, batch_size), desc="eval", leave=False,
                               disable=not progress):
        x = preprocess(images.to(device, non_blocking=True))
        with autocast_context(device, precision):
            logits = model(x)
            if flip_tta:
                mirrored = model(x.flip(-1))
        logits, labels = logits.float().cpu(), labels.cpu()
        if flip_tta:  # log of the mean probability: the loss and the prediction of the averaged model
            mean_probs = (logits.softmax(1) + mirrored.float().cpu().softmax(1)) / 2
            logits = mean_probs.clamp_min(torch.finfo(mean_probs.dtype).tiny).log()
        total_loss += F.cross_entropy(logits, labels, reduction="sum").item()
        seen += len(labels)
        probs, guess = logits.softmax(1).max(1)
        predicted.append(guess)
        confidence.append(probs)
        confusion += torch.bincount(labels * num_classes + guess, minlength=num_classes**2).view(num_classes, num_classes)
    correct = confusion.diag().sum().item()
    return {"loss": total_loss / max(1, seen), "acc": correct / max(1, seen), "confusion": confusion,
            "predicted": torch.cat(predicted) if predicted else torch.zeros(0, dtype=torch.long),
            "confidence": torch.cat(confidence) if confidence else torch.zeros(0)}


@dataclass
class TrainResult:
    run_dir: Path
    history: list[dict[str, Any]]
    best_val_acc: float

    @property
    def final(self) -> dict[str, Any]:
        return self.history[-1] if self.history else {}


def prepare_run_dir(run_dir: Path, cfg: RunConfig, resume: bool) -> None:
    """Create a new run directory, or check that ``resume`` points at an existing one."""
    config_file = run_dir / CONFIG_FILE
    if resume:
        if not config_file.exists():
            raise FileNotFoundError(f"cannot resume: {run_dir} holds no {CONFIG_FILE}; is it a vitlab run directory?")
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
    return RunConfig.from_dict(yaml.safe_load((Path(run_dir) / CONFIG_FILE).read_text()))


def train(cfg: RunConfig, run_dir: str | Path, resume: bool = False, progress: bool = True,
          stop_after_epoch: int | None = None, data: ImageData | None = None) -> TrainResult:
    """Train ``cfg`` into ``run_dir`` (or continue it with ``resume=True``).

    ``stop_after_epoch`` ends the session early, as a kill after that epoch would. Started by
    torchrun, every process runs this with its share of each batch (see
    :mod:`vitlab.training.distributed`); rank 0 alone writes the run directory and prints.
    """
    called = time.perf_counter()  # a time budget counts from here: loading the data is part of the run
    run_dir = Path(run_dir)
    cfg = read_run_config(run_dir) if resume else copy.deepcopy(cfg)  # never change the caller's config
    tc, ft = cfg.train, cfg.finetune
    if tc.time_budget_s is not None and tc.time_budget_s <= 0:
        raise ValueError(f"--train.time_budget_s must be a positive number of seconds, got {tc.time_budget_s}")
    if ft is not None and cfg.arch != "vit":
        raise ValueError(f"fine-tuning starts from pretrained ViT weights; it cannot train --arch {cfg.arch}")
    if tc.threads:
        torch.set_num_threads(tc.threads)
    ctx = setup_distributed(tc.device)
    device = torch.device("cuda", ctx.local_rank) if ctx.enabled and torch.cuda.is_available() and tc.device in (
        "auto", "cuda") else resolve_device(tc.device)
    progress = progress and ctx.is_main
    local_batch_size(tc.batch_size, ctx)  # the global batch must split evenly
    model, notes = None, {}
    if ft is not None and not resume:  # the architecture and preprocessing come from the weights
        model, notes = start_from_pretrained(cfg)
    data = data or load_data(cfg.data, image_size=cfg.model.img_size, seed=tc.seed, progress=progress)
    cfg.model.num_classes = data.num_classes  # the head always matches the data
    if model is not None:
        notes["head"] = f"new zero-initialised head for {data.num_classes} classes"
        model.reset_classifier(data.num_classes)
    if ctx.is_main:
        prepare_run_dir(run_dir, cfg, resume)
    ctx.barrier()

    if model is None:
        torch.manual_seed(tc.seed)
        model = build_model(cfg.model, cfg.arch)
    model = model.to(device)
    optimizer = build_optimizer(model, tc, ft)
    ema = weight_ema(model, tc.ema_decay) if tc.ema_decay else None
    steps_per_epoch = num_batches(data.train, tc.batch_size, ctx.world_size)
    scheduler = build_scheduler(optimizer, tc, steps_per_epoch, ft)
    preprocess = Preprocess(data.mean, data.std, cfg.model.in_chans, cfg.model.img_size, cfg.data.augment,
                            resize_mode=cfg.data.interpolation, erase_prob=cfg.data.random_erasing)
    eval_preprocess = Preprocess(data.mean, data.std, cfg.model.in_chans, cfg.model.img_size,
                                 resize_mode=cfg.data.interpolation)

    history: list[dict[str, Any]] = []
    best_acc, start_epoch = -1.0, 0
    state = load_resume_state(run_dir) if resume else None
    if state is not None:
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        history, best_acc, start_epoch = state["history"], state["best_val_acc"], state["epoch"]
        if ema is not None:
            if "ema" not in state:
                raise ValueError(f"cannot resume {run_dir} with --train.ema_decay: its saved state has no weight average")
            ema.load_state_dict(state["ema"])
    if ctx.is_main:
        _write_metrics(run_dir, history)  # drops any line written after the saved state

    flops = model_flops(model)
    info = {"classes": data.classes, "params": model.num_params(), "flops": flops,
            "preprocessing": preprocessing_info(data, cfg),
            "run_config": cfg.to_dict(), "data_notes": {**data.notes, **notes}}
    if progress:
        where = f"resuming after epoch {start_epoch}" if start_epoch else "new run"
        source = f" | from {ft.pretrained} ({ft.mode})" if ft is not None else ""
        tqdm.write(f"vitlab: {where} in {run_dir} | {data.name}: {len(data.train)} train / {len(data.val)} val "
                   f"images, {data.num_classes} classes | model {model.num_params():,} params, "
                   f"{flops / 1e6:.1f} MFLOPs/image | device {device}{source}")
        for note in notes.values():
            tqdm.write(f"  {note}")

    # What one step trains: the whole model on images, or (linear probe, features cached) the head on features.
    # What is validated and saved: the model, or the moving average of its weights.
    step_model, train_split, val_split = model, data.train, data.val
    saved_model = ema.module if ema is not None else model
    eval_model = saved_model
    if uses_feature_cache(cfg):
        train_split = extract_features(model, data.train, eval_preprocess, tc, device, progress, "train")
        val_split = extract_features(model, data.val, eval_preprocess, tc, device, progress, "val")
        step_model, eval_model = model.head, saved_model.head
        preprocess = eval_preprocess = _features_as_input
        steps_per_epoch = num_batches(train_split, tc.batch_size, ctx.world_size)

    started = time.perf_counter() - (history[-1]["elapsed_s"] if history else 0.0)
    val = None
    board = tensorboard_writer(run_dir) if tc.tensorboard and ctx.is_main else None
    compiled = torch.compile(step_model) if tc.compile and not ctx.enabled else None
    ddp_runner, ddp_frozen = None, None
    plan_epochs = tc.time_budget_s is not None and start_epoch == 0  # a resumed run keeps its plan (config.yaml)
    for epoch in itertools.count(start_epoch):  # not range(): a time budget sets tc.epochs after the first epoch
        if epoch >= tc.epochs or (stop_after_epoch is not None and epoch >= stop_after_epoch):
            break
        seed = epoch_seed(tc.seed, epoch)
        torch.manual_seed(seed + 7919 * ctx.rank)  # dropout and drop path (own masks per process)
        order = torch.Generator().manual_seed(seed)  # the same global order in every process
        augment_rng = torch.Generator().manual_seed(seed + 1 + 7919 * ctx.rank)
        frozen = backbone_frozen(ft, epoch)
        set_backbone_trainable(model, not frozen)
        model.train(not frozen)  # a frozen backbone runs as at inference: no dropout, no drop path
        runner = compiled if compiled is not None else step_model
        if ctx.enabled:  # wrapped again only when staged fine-tuning changes what is trainable (and compiled once per wrap)
            if ddp_frozen != frozen:
                ddp_runner, ddp_frozen = _data_parallel(step_model, device, tc.compile), frozen
            runner = ddp_runner
        loss_sum = torch.zeros((), device=device)
        correct = torch.zeros((), device=device, dtype=torch.long)
        seen, epoch_start, warm_at, steady_end = 0, time.perf_counter(), None, None
        bar = tqdm(iterate_batches(train_split, tc.batch_size, shuffle=True, generator=order,
                                   num_workers=cfg.data.num_workers, shard=(ctx.rank, ctx.world_size)),
                   total=steps_per_epoch, desc=f"epoch {epoch + 1}/{tc.epochs}", leave=False, disable=not progress,
                   dynamic_ncols=True)
        for step, (images, labels) in enumerate(bar):
            x = preprocess(images.to(device, non_blocking=True), train=True, generator=augment_rng)
            y = labels.to(device, non_blocking=True)
            with autocast_context(device, tc.precision):
                logits = runner(x)
                loss = F.cross_entropy(logits.float(), y, label_smoothing=tc.label_smoothing)
            if not torch.isfinite(loss):
                raise FloatingPointError(
                    f"loss became {loss.item()} at epoch {epoch + 1}, step {step}; lower --train.lr "
                    f"(now {tc.lr}) or enable --train.grad_clip"
                )
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if tc.grad_clip > 0:
                torch.nn.utils.clip_grad_norm_(model.parameters(), tc.grad_clip)
            optimizer.step()
            scheduler.step()
            if ema is not None:
                ema.update_parameters(model)
            loss_sum += loss.detach() * len(y)
            correct += (logits.argmax(1) == y).sum()
            seen += len(y)
            if plan_epochs and step + 1 == WARM_STEPS:
                warm_at = _synchronized_time(device)
            if plan_epochs and warm_at is not None and step + 2 == steps_per_epoch:  # the last batch is not timed:
                steady_end = _synchronized_time(device)  # a smaller one makes a compiled model compile again
            if progress and (step % 20 == 0 or step == steps_per_epoch - 1):
                rate = seen / max(1e-9, time.perf_counter() - epoch_start)
                bar.set_postfix(loss=f"{loss_sum.item() / seen:.4f}", acc=f"{correct.item() / seen:.4f}",
                                lr=f"{max(g['lr'] for g in optimizer.param_groups):.2e}", img_s=f"{rate:.0f}")
        bar.close()
        train_end = _synchronized_time(device) if plan_epochs else time.perf_counter()
        train_time = train_end - epoch_start
        if ctx.enabled:  # the epoch's numbers over all processes
            loss_sum, correct, seen_all = ctx.all_sum(loss_sum, correct, torch.tensor(float(seen)))
            seen = int(seen_all.item())
        val = evaluate(eval_model, val_split, eval_preprocess, tc.eval_batch_size, device, tc.precision, data.num_classes)
        if plan_epochs:  # the first epoch is done: as many more as fit in the budget, the schedule over them all
            plan_epochs = False
            timed = steps_per_epoch - 1 - WARM_STEPS if steady_end is not None else 0
            timed_s = steady_end - warm_at if timed > 0 else 0.0
            epoch_s = epoch_seconds(steps_per_epoch, timed, timed_s, train_time, time.perf_counter() - train_end)
            elapsed_s = time.perf_counter() - called
            if ctx.enabled:  # every process must plan the same number
                epoch_s, elapsed_s = (v.item() / ctx.world_size for v in ctx.all_sum(torch.tensor(epoch_s),
                                                                                    torch.tensor(elapsed_s)))
            tc.epochs = planned_epochs(tc.time_budget_s, elapsed_s, epoch_s, done_epochs=epoch + 1)
            scheduler = build_scheduler(optimizer, tc, steps_per_epoch, ft, steps_done=scheduler.last_epoch)
            info["run_config"] = cfg.to_dict()
            if ctx.is_main:
                write_run_config(run_dir, cfg)
            if progress:
                tqdm.write(f"time budget {tc.time_budget_s:.0f} s: {elapsed_s:.0f} s used, {epoch_s:.1f} s per epoch "
                           f"from now on -> {tc.epochs} epochs in all")
        record = {
            "epoch": epoch + 1, "train_loss": loss_sum.item() / seen, "train_acc": correct.item() / seen,
            "val_loss": val["loss"], "val_acc": val["acc"], "lr": max(g["lr"] for g in optimizer.param_groups),
            "train_images_per_s": seen / train_time, "epoch_s": time.perf_counter() - epoch_start,
            "elapsed_s": time.perf_counter() - started,
        }
        history.append(record)
        is_best = record["val_acc"] > best_acc
        best_acc = max(best_acc, record["val_acc"])
        if not ctx.is_main:
            continue  # rank 0 alone writes the run directory
        ckpt_info = {**info, "epoch": epoch + 1, "metrics": record}
        save_checkpoint(run_dir / "last.safetensors", saved_model, ckpt_info)
        if is_best:
            save_checkpoint(run_dir / "best.safetensors", saved_model, ckpt_info)
        resume_state = {
            "model": model.state_dict(), "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
            "epoch": epoch + 1, "history": history, "best_val_acc": best_acc,
        }
        if ema is not None:
            resume_state["ema"] = ema.state_dict()
        save_resume_state(run_dir, resume_state)
        _write_metrics(run_dir, history)
        if board is not None:
            for key, value in record.items():
                if key != "epoch":
                    board.add_scalar(key, value, epoch + 1)
            board.flush()
        if progress:
            tqdm.write(
                f"epoch {epoch + 1:>3}/{tc.epochs} | train loss {record['train_loss']:.4f} acc "
                f"{record['train_acc']:.4f} | val loss {record['val_loss']:.4f} acc {record['val_acc']:.4f}"
                f"{' *' if is_best else '  '} | {record['train_images_per_s']:.0f} img/s | "
                f"{record['epoch_s']:.1f}s (total {record['elapsed_s']:.0f}s)"
            )
    ctx.barrier()
    if ctx.is_main and history and history[-1]["epoch"] == tc.epochs:  # finished: draw the run's pictures
        if val is None:  # resumed after the last epoch was saved
            val = evaluate(eval_model, val_split, eval_preprocess, tc.eval_batch_size, device, tc.precision,
                           data.num_classes)
        from vitlab.insight.run_figures import write_run_figures

        write_run_figures(run_dir, history, data.classes, val, data.val, title=f"{data.name}: {run_dir.name}")
    if board is not None:
        board.close()
    if ctx.enabled:
        torch.distributed.destroy_process_group()
    return TrainResult(run_dir, history, best_acc)


def _synchronized_time(device: torch.device) -> float:
    """``perf_counter()`` once the device has finished the work queued so far (CUDA runs asynchronously)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter()


def tensorboard_writer(run_dir: Path):
    """A SummaryWriter into ``RUN_DIR/tensorboard`` (``tensorboard --logdir runs`` shows every run)."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError as exc:
        raise ValueError("--train.tensorboard needs the tensorboard package: pip install \"vitlab[tensorboard]\" "
                         "(or leave --train.tensorboard off; metrics.jsonl and figures/ have the same numbers)") from exc
    return SummaryWriter(log_dir=str(run_dir / "tensorboard"))


def start_from_pretrained(cfg: RunConfig) -> tuple[ViT, dict[str, str]]:
    """Load ``cfg.finetune``'s weights; fill ``cfg.model`` and the data's preprocessing from them."""
    from vitlab.pretrained import load_pretrained

    ft = cfg.finetune
    model, pinfo = load_pretrained(ft.pretrained, file=ft.pretrained_file, img_size=ft.img_size,
                                   drop_path_rate=ft.drop_path_rate)
    cfg.model = replace(model.cfg)
    prep, data = pinfo.preprocessing, cfg.data
    if data.mean is None and data.std is None:
        data.mean, data.std = tuple(prep.mean), tuple(prep.std)
    data.interpolation, data.crop_pct = prep.interpolation, round(prep.crop_pct, 4)
    notes = {"pretrained": f"weights {pinfo.name} ({pinfo.source_format} layout) from {pinfo.file}"}
    notes.update({f"change_{i}": change for i, change in enumerate(pinfo.changes)})
    return model, notes


def backbone_frozen(ft: FinetuneConfig | None, epoch: int) -> bool:
    """Linear probe: always; staged: during the first ``head_epochs`` epochs."""
    if ft is None:
        return False
    return ft.mode == "linear" or (ft.mode == "staged" and epoch < ft.head_epochs)


def set_backbone_trainable(model: ViT, trainable: bool) -> None:
    for name, param in model.named_parameters():
        param.requires_grad_(trainable or name.startswith("head."))


def uses_feature_cache(cfg: RunConfig) -> bool:
    ft = cfg.finetune
    return ft is not None and ft.mode == "linear" and ft.cache_features and cfg.data.augment == "none"


def _features_as_input(x: torch.Tensor, train: bool = False, generator: torch.Generator | None = None) -> torch.Tensor:
    return x


def _data_parallel(module: torch.nn.Module, device: torch.device, compile_: bool) -> torch.nn.Module:
    """``module`` in DistributedDataParallel (gradients averaged over the processes), compiled if asked."""
    from torch.nn.parallel import DistributedDataParallel

    wrapped = DistributedDataParallel(module, device_ids=[device.index] if device.type == "cuda" else None)
    return torch.compile(wrapped) if compile_ else wrapped


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


def _write_metrics(run_dir: Path, history: list[dict[str, Any]]) -> None:
    atomic_write_text(run_dir / METRICS_FILE, "".join(json.dumps(r) + "\n" for r in history))
