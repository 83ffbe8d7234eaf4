"""Training, checkpoints, run directories and resume."""

from __future__ import annotations

import math
from dataclasses import replace

import pytest
import torch
import yaml

from vitlab.config import DataConfig, RunConfig, TrainConfig
from vitlab.data import load_data
from vitlab.model import ViT, ViTConfig
from vitlab.resolve import ConfigError
from vitlab.training import CheckpointError, RunExistsError, load_checkpoint, save_checkpoint, train
from vitlab.training.checkpoint import load_state_dict_checked, read_checkpoint_info
from vitlab.training.optim import build_scheduler, lr_factor, param_groups


def tiny_run(folder, epochs: int = 2, random_erasing: float = 0.0, **train_overrides) -> RunConfig:
    return RunConfig(
        model=ViTConfig(img_size=16, patch_size=4, in_chans=3, num_classes=3, embed_dim=32, depth=2, num_heads=2,
                        drop_rate=0.1, drop_path_rate=0.1),
        data=DataConfig(dataset="imagefolder", path=str(folder), augment="flip", num_workers=0,
                        random_erasing=random_erasing),
        train=TrainConfig(**{"epochs": epochs, "batch_size": 8, "lr": 1e-3, "warmup_epochs": 0.5,
                             "label_smoothing": 0.1, **train_overrides}),
    )


def test_training_learns_and_writes_the_run_directory(pattern_folder, tmp_path):
    result = train(tiny_run(pattern_folder, epochs=4), tmp_path / "run", progress=False)
    run = tmp_path / "run"
    assert {p.name for p in run.iterdir()} >= {"config.yaml", "metrics.jsonl", "best.safetensors", "best.json",
                                               "last.safetensors", "last.json", "resume.pt"}
    lines = (run / "metrics.jsonl").read_text().splitlines()
    assert len(lines) == 4 and result.history[-1]["epoch"] == 4
    assert result.history[-1]["val_acc"] >= 0.9, result.history  # 3 easy classes: far above chance (0.33)
    assert result.history[-1]["train_loss"] < result.history[0]["train_loss"]
    saved = yaml.safe_load((run / "config.yaml").read_text())
    assert saved["model"]["num_classes"] == 3 and saved["train"]["epochs"] == 4
    info = read_checkpoint_info(run / "best.safetensors")
    assert info["classes"] == ["circle", "cross", "stripes"]
    own = load_data(tiny_run(pattern_folder).data, image_size=(16, 16)).mean  # the training images' own statistics
    assert info["preprocessing"]["mean"] == list(own) and own != (0.485, 0.456, 0.406)
    assert info["versions"]["torch"] == torch.__version__


def test_checkpoint_round_trip_gives_identical_logits(tmp_path):
    torch.manual_seed(0)
    model = ViT(ViTConfig(img_size=16, patch_size=4, in_chans=1, num_classes=4, embed_dim=32, depth=2,
                          num_heads=2, pos_embed="sincos")).eval()
    torch.nn.init.normal_(model.head.weight)
    save_checkpoint(tmp_path / "ckpt", model, {"classes": list("abcd")})
    loaded, info = load_checkpoint(tmp_path / "ckpt.safetensors")
    x = torch.randn(3, 1, 16, 16)
    assert torch.equal(model(x), loaded(x))
    assert info["classes"] == list("abcd") and info["model"]["pos_embed"] == "sincos"
    assert (tmp_path / "ckpt.json").exists()
    assert not list(tmp_path.glob(".*tmp*")), "temporary files must not stay behind"


def test_corrupt_and_foreign_checkpoints_are_refused(tmp_path):
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"\x00" * 100)
    with pytest.raises(CheckpointError, match="corrupt"):
        load_checkpoint(bad)
    model = ViT(ViTConfig(img_size=8, patch_size=4, in_chans=1, num_classes=2, embed_dim=8, depth=1, num_heads=2))
    path = save_checkpoint(tmp_path / "good", model, {"classes": ["a", "b"]})
    truncated = tmp_path / "truncated.safetensors"
    truncated.write_bytes(path.read_bytes()[:-50])
    with pytest.raises(CheckpointError):
        load_checkpoint(truncated)
    from safetensors.torch import save_file

    save_file({"w": torch.zeros(1)}, str(tmp_path / "foreign.safetensors"))
    with pytest.raises(CheckpointError, match="not a checkpoint written by vitlab"):
        load_checkpoint(tmp_path / "foreign.safetensors")
    with pytest.raises(CheckpointError, match="does not exist"):
        load_checkpoint(tmp_path / "missing.safetensors")


def test_mismatched_state_dict_lists_every_problem():
    model = ViT(ViTConfig(img_size=8, patch_size=4, in_chans=1, num_classes=2, embed_dim=8, depth=1, num_heads=2))
    state = dict(model.state_dict())
    state.pop("norm.weight")
    state["extra.weight"] = torch.zeros(1)
    state["head.weight"] = torch.zeros(5, 8)
    with pytest.raises(CheckpointError) as info:
        load_state_dict_checked(model, state, source="x.safetensors")
    message = str(info.value)
    assert "missing keys: ['norm.weight']" in message and "unexpected keys: ['extra.weight']" in message
    assert "head.weight: checkpoint (5, 8) vs model (2, 8)" in message


def test_existing_run_directory_is_never_overwritten(pattern_folder, tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / "notes.txt").write_text("precious")
    with pytest.raises(RunExistsError, match="--resume"):
        train(tiny_run(pattern_folder, epochs=1), run, progress=False)
    assert (run / "notes.txt").read_text() == "precious" and not (run / "config.yaml").exists()


def test_resume_after_an_interruption_matches_the_uninterrupted_run(pattern_folder, tmp_path):
    # with random erasing, which draws from the run's generator too
    full = train(tiny_run(pattern_folder, epochs=3, random_erasing=0.5), tmp_path / "full", progress=False)
    plain = train(tiny_run(pattern_folder, epochs=1), tmp_path / "plain", progress=False)
    assert plain.history[0]["train_loss"] != full.history[0]["train_loss"]  # erasing changed the training
    train(tiny_run(pattern_folder, epochs=3, random_erasing=0.5), tmp_path / "cut", progress=False, stop_after_epoch=1)
    assert len((tmp_path / "cut" / "metrics.jsonl").read_text().splitlines()) == 1
    resumed = train(RunConfig(), tmp_path / "cut", resume=True, progress=False)
    a, _ = load_checkpoint(tmp_path / "full" / "last.safetensors")
    b, _ = load_checkpoint(tmp_path / "cut" / "last.safetensors")
    for (name, p), q in zip(a.state_dict().items(), b.state_dict().values()):
        assert torch.equal(p, q), name
    keys = ("train_loss", "train_acc", "val_loss", "val_acc", "lr")
    assert [[h[k] for k in keys] for h in full.history] == [[h[k] for k in keys] for h in resumed.history]


def test_resume_without_a_run_is_an_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="config.yaml"):
        train(RunConfig(), tmp_path, resume=True, progress=False)


def test_no_weight_decay_on_norms_biases_and_embeddings():
    model = ViT(ViTConfig(img_size=8, patch_size=4, in_chans=1, num_classes=2, embed_dim=8, depth=2, num_heads=2))
    groups = param_groups(model, 0.05)
    names = {id(p): n for n, p in model.named_parameters()}
    decayed = {names[id(p)] for g in groups if g["weight_decay"] == 0.05 for p in g["params"]}
    exempt = {names[id(p)] for g in groups if g["weight_decay"] == 0.0 for p in g["params"]}
    assert {"pos_embed", "cls_token", "norm.weight", "norm.bias", "blocks.0.attn.qkv.bias", "head.bias"} <= exempt
    assert {"blocks.0.attn.qkv.weight", "blocks.1.mlp.fc1.weight", "patch_embed.proj.weight", "head.weight"} <= decayed
    assert len(decayed) + len(exempt) == len(names)


def test_warmup_then_cosine_schedule():
    assert lr_factor(0, 100, 10, "cosine", 0.0) == pytest.approx(0.1)
    assert lr_factor(9, 100, 10, "cosine", 0.0) == pytest.approx(1.0)
    assert lr_factor(55, 100, 10, "cosine", 0.0) == pytest.approx(0.5)
    assert lr_factor(100, 100, 10, "cosine", 0.01) == pytest.approx(0.01)
    assert lr_factor(50, 100, 10, "constant", 0.0) == 1.0
    assert lr_factor(55, 100, 10, "linear", 0.0) == pytest.approx(0.5)
    assert lr_factor(32, 100, 10, "linear", 0.0) == pytest.approx(1 - 22 / 90)
    assert lr_factor(100, 100, 10, "linear", 0.01) == pytest.approx(0.01)
    model = torch.nn.Linear(2, 2)
    opt = torch.optim.SGD(model.parameters(), lr=1.0)
    sched = build_scheduler(opt, TrainConfig(epochs=2, lr=1.0, min_lr=0.0, warmup_epochs=1), steps_per_epoch=4)
    lrs = []
    for _ in range(8):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert lrs[:4] == pytest.approx([0.25, 0.5, 0.75, 1.0])
    assert lrs[4:] == pytest.approx([0.5 * (1 + math.cos(math.pi * k / 4)) for k in range(4)])


def test_eval_every_validates_every_nth_epoch_and_the_last(pattern_folder, tmp_path):
    result = train(tiny_run(pattern_folder, epochs=4, eval_every=3), tmp_path / "run", progress=False)
    assert ["val_acc" in h and "val_loss" in h for h in result.history] == [False, False, True, True]
    assert result.best_val_acc == max(result.history[2]["val_acc"], result.history[3]["val_acc"])
    best = read_checkpoint_info(tmp_path / "run" / "best.safetensors")
    assert best["epoch"] in (3, 4) and best["metrics"]["val_acc"] == result.best_val_acc
    assert (tmp_path / "run" / "figures" / "curves.png").stat().st_size > 0  # drawn from the validated epochs
    with pytest.raises(ConfigError, match="--train.eval_every must be at least 1"):
        train(tiny_run(pattern_folder, eval_every=0), tmp_path / "bad", progress=False)


def progressive_run(folder, **train_overrides) -> RunConfig:
    """tiny_run (16x16 images, patch 4) whose model takes other sizes, trained from 8 pixels up over 2 epochs."""
    cfg = tiny_run(folder, **{"progressive_res": 8, "progressive_epochs": 2, **train_overrides})
    return replace(cfg, model=replace(cfg.model, dynamic_img_size=True))


def test_progressive_resizing_trains_small_first_and_validates_at_full_size(pattern_folder, tmp_path, monkeypatch):
    import vitlab.training.trainer as trainer_module

    seen = {"train": [], "val": [], "lr": []}
    real_step, real_evaluate = trainer_module.train_step, trainer_module.evaluate

    def step(run, runner, x, y, epoch, step):
        seen["train"].append((epoch, tuple(x.shape[-2:])))
        seen["lr"].append(run.optimizer.param_groups[0]["lr"])
        return real_step(run, runner, x, y, epoch, step)

    def evaluate(model, split, preprocess, *args, **kwargs):
        def recorded(x, *a, **k):
            out = preprocess(x, *a, **k)
            seen["val"].append(tuple(out.shape[-2:]))
            return out
        return real_evaluate(model, split, recorded, *args, **kwargs)

    monkeypatch.setattr(trainer_module, "train_step", step)
    monkeypatch.setattr(trainer_module, "evaluate", evaluate)
    cfg = progressive_run(pattern_folder, epochs=4, progressive_lr_scale=0.25)
    result = train(cfg, tmp_path / "run", progress=False)
    sizes = {epoch: {size for e, size in seen["train"] if e == epoch} for epoch in range(4)}
    assert sizes == {0: {(8, 8)}, 1: {(12, 12)}, 2: {(16, 16)}, 3: {(16, 16)}}  # 8 + 8 * epoch / 2, in whole patches
    assert set(seen["val"]) == {(16, 16)} and len(result.history) == 4
    # the rate at 8 px is a quarter, at 12 px (halfway up in side) a half of the schedule's; full size: all of it
    tc, steps = cfg.train, len(seen["lr"]) // 4
    schedule = [tc.lr * lr_factor(i, 4 * steps, round(tc.warmup_epochs * steps), tc.schedule, tc.min_lr / tc.lr)
                for i in range(4 * steps)]
    scales = [0.25] * steps + [0.5] * steps + [1.0] * 2 * steps
    assert seen["lr"] == pytest.approx([s * f for s, f in zip(schedule, scales)], rel=1e-6)


@pytest.mark.parametrize("overrides,message", [
    (dict(progressive_res=12, progressive_epochs=2), "--model.dynamic_img_size true"),
    (dict(progressive_res=10, progressive_epochs=2, dynamic=True), "multiple of the patch size 4 below img_size 16"),
    (dict(progressive_res=16, progressive_epochs=2, dynamic=True), "multiple of the patch size 4 below img_size 16"),
    (dict(progressive_res=8, progressive_epochs=4, dynamic=True), "--train.progressive_epochs must be at least 1 and below"),
    (dict(progressive_res=8, dynamic=True), "--train.progressive_epochs must be at least 1"),
    (dict(progressive_res=8, progressive_epochs=2, progressive_lr_scale=1.5, dynamic=True), "must be in \\(0, 1\\], got 1.5"),
])
def test_progressive_resizing_is_checked_before_training(pattern_folder, tmp_path, overrides, message):
    dynamic = overrides.pop("dynamic", False)
    cfg = tiny_run(pattern_folder, epochs=4, **overrides)
    cfg = replace(cfg, model=replace(cfg.model, dynamic_img_size=dynamic))
    with pytest.raises(ConfigError, match=message):
        train(cfg, tmp_path / "r", progress=False)
    assert not (tmp_path / "r").exists()


def test_a_short_run_of_a_progressive_preset_is_told_how_to_turn_it_off():
    from vitlab.resolve import resolve_config

    short = {"train.epochs": 3, "train.time_budget_s": None}
    with pytest.raises(ConfigError, match=r"below --train.epochs \(3\), got 10 \(or turn progressive resizing off: "
                                          r"--train.progressive_res 0\)"):
        resolve_config("cifar10_60min", overrides=short)
    off = resolve_config("cifar10_60min", overrides={**short, "train.progressive_res": 0}).train
    assert (off.epochs, off.progressive_res, off.progressive_epochs) == (3, 0, 10)  # the ramp's length is then unused


def test_training_is_repeatable_on_cpu(pattern_folder, tmp_path):
    a = train(tiny_run(pattern_folder, epochs=1), tmp_path / "a", progress=False)
    b = train(tiny_run(pattern_folder, epochs=1), tmp_path / "b", progress=False)
    assert a.history[0]["train_loss"] == b.history[0]["train_loss"]
    c = train(tiny_run(pattern_folder, epochs=1, seed=1), tmp_path / "c", progress=False)
    assert c.history[0]["train_loss"] != a.history[0]["train_loss"]


def test_diverging_loss_stops_with_advice(pattern_folder, tmp_path):
    with pytest.raises(FloatingPointError, match="lower --train.lr"):
        train(tiny_run(pattern_folder, epochs=1, lr=1e6, grad_clip=0.0, warmup_epochs=0), tmp_path / "r",
              progress=False)


def test_flip_tta_averages_each_image_with_its_mirror_image():
    from vitlab.data import ImageSplit, Preprocess
    from vitlab.training.trainer import evaluate

    torch.manual_seed(0)
    model = ViT(ViTConfig(img_size=16, patch_size=4, in_chans=3, num_classes=4, embed_dim=32, depth=2, num_heads=2)).eval()
    torch.nn.init.normal_(model.head.weight)  # the head starts at zero: every prediction would be uniform
    images = torch.randint(0, 256, (10, 3, 16, 16), dtype=torch.uint8)
    labels = torch.randint(0, 4, (10,))
    preprocess = Preprocess([0.5] * 3, [0.5] * 3, 3, (16, 16))
    split = ImageSplit(labels, images=images)
    plain = evaluate(model, split, preprocess, 4, torch.device("cpu"))
    tta = evaluate(model, split, preprocess, 4, torch.device("cpu"), flip_tta=True)
    with torch.no_grad():
        x = preprocess(images)
        probs = (model(x).softmax(1) + model(x.flip(-1)).softmax(1)) / 2
    expected_loss = torch.nn.functional.nll_loss(probs.log(), labels).item()
    assert tta["loss"] == pytest.approx(expected_loss, rel=1e-5)
    assert torch.equal(tta["predicted"], probs.argmax(1))
    torch.testing.assert_close(tta["confidence"], probs.max(1).values)
    assert tta["loss"] != pytest.approx(plain["loss"], rel=1e-3)  # the mirror images changed the result


def test_eval_flip_tta_only_for_models_trained_with_flips(pattern_folder, tmp_path):
    from vitlab.evaluate import evaluate_checkpoint

    flipped = tiny_run(pattern_folder, epochs=1)
    train(flipped, tmp_path / "flip", progress=False)
    report = evaluate_checkpoint(tmp_path / "flip", tta="flip", device="cpu")
    assert report.tta == "flip" and "test-time augmentation: flip" in report.as_text()
    assert int(report.confusion.sum()) == 30

    flipped_run = tiny_run(pattern_folder, epochs=1)
    upright = replace(flipped_run, data=replace(flipped_run.data, augment="none"))
    train(upright, tmp_path / "none", progress=False)
    with pytest.raises(ValueError, match="horizontal flips.*augment='none'"):
        evaluate_checkpoint(tmp_path / "none", tta="flip", device="cpu")
    with pytest.raises(ValueError, match="unknown test-time augmentation"):
        evaluate_checkpoint(tmp_path / "none", tta="five_crop", device="cpu")
