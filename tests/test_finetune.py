"""Fine-tuning: pretrained weights into a run directory, linear / staged / full, resume, eval, predict."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from vitlab.cli import main
from vitlab.config import DataConfig, FinetuneConfig, RunConfig, TrainConfig
from vitlab.model import ViT, ViTConfig
from vitlab.training import train
from vitlab.training.optim import build_optimizer, build_scheduler, param_groups


def finetune_cfg(pattern_folder: Path, weights: Path, mode: str, epochs: int = 2, **ft) -> RunConfig:
    return RunConfig(
        data=DataConfig(dataset="imagefolder", path=str(pattern_folder), num_workers=0),
        train=TrainConfig(epochs=epochs, batch_size=32, lr=3e-3, warmup_epochs=0, seed=1),
        finetune=FinetuneConfig(pretrained=str(weights), mode=mode, **ft),
    )


def backbone(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: v for k, v in state.items() if not k.startswith("head.")}


def assert_same_backbone(a: dict, b: dict) -> None:
    assert backbone(a).keys() == backbone(b).keys()
    assert all(torch.equal(a[k], b[k]) for k in backbone(a))


def test_linear_probe_trains_only_the_head_with_the_weights_preprocessing(pattern_folder, random_weights, tmp_path):
    result = train(finetune_cfg(pattern_folder, random_weights, "linear", epochs=3), tmp_path / "run", progress=False)
    assert result.best_val_acc > 0.6  # 3 classes: chance is 1/3
    trained = load_file(str(tmp_path / "run" / "best.safetensors"))
    assert_same_backbone(trained, load_file(str(random_weights)))
    assert trained["head.weight"].shape == (3, 48) and trained["head.weight"].abs().sum() > 0
    info = json.loads((tmp_path / "run" / "best.json").read_text())
    # a timm file outside the registry: ImageNet normalisation and timm's default 0.875 crop
    assert info["preprocessing"]["mean"] == pytest.approx([0.485, 0.456, 0.406])
    assert info["preprocessing"]["crop_pct"] == pytest.approx(32 / 37, abs=1e-3)
    assert info["run_config"]["finetune"]["mode"] == "linear"
    assert "new zero-initialised head for 3 classes" in info["data_notes"].values()


def test_feature_cache_gives_the_same_head_as_training_through_the_backbone(pattern_folder, random_weights, tmp_path):
    cached = train(finetune_cfg(pattern_folder, random_weights, "linear"), tmp_path / "a", progress=False)
    direct = train(finetune_cfg(pattern_folder, random_weights, "linear", cache_features=False), tmp_path / "b",
                   progress=False)
    a, b = load_file(str(tmp_path / "a" / "last.safetensors")), load_file(str(tmp_path / "b" / "last.safetensors"))
    torch.testing.assert_close(a["head.weight"], b["head.weight"], atol=1e-4, rtol=1e-3)
    assert cached.history[-1]["val_acc"] == pytest.approx(direct.history[-1]["val_acc"], abs=0.04)


def test_staged_freezes_then_unfreezes_and_resumes(pattern_folder, random_weights, tmp_path):
    cfg = finetune_cfg(pattern_folder, random_weights, "staged", epochs=3, head_epochs=1, backbone_lr_scale=0.5)
    train(cfg, tmp_path / "run", progress=False, stop_after_epoch=1)  # as if killed after the head-only epoch
    after_head = load_file(str(tmp_path / "run" / "last.safetensors"))
    assert_same_backbone(after_head, load_file(str(random_weights)))
    resumed = train(RunConfig(), tmp_path / "run", resume=True, progress=False)
    assert [h["epoch"] for h in resumed.history] == [1, 2, 3]
    final = load_file(str(tmp_path / "run" / "last.safetensors"))
    assert not torch.equal(final["blocks.0.attn.qkv.weight"], after_head["blocks.0.attn.qkv.weight"])
    full = train(cfg, tmp_path / "uninterrupted", progress=False)
    assert [h["val_acc"] for h in full.history] == [h["val_acc"] for h in resumed.history]
    assert torch.equal(load_file(str(tmp_path / "uninterrupted" / "last.safetensors"))["head.weight"], final["head.weight"])


def test_staged_schedule_keeps_the_backbone_at_zero_then_scaled():
    model = ViT(ViTConfig(img_size=8, patch_size=4, in_chans=1, num_classes=2, embed_dim=8, depth=2, num_heads=2))
    tc = TrainConfig(epochs=4, lr=1e-3, warmup_epochs=0, schedule="constant")
    ft = FinetuneConfig(mode="staged", head_epochs=2, backbone_lr_scale=0.1)
    optimizer = build_optimizer(model, tc, ft)
    scheduler = build_scheduler(optimizer, tc, steps_per_epoch=5, ft=ft)
    rates = []
    for _ in range(20):
        rates.append({g["is_head"]: g["lr"] for g in optimizer.param_groups})
        optimizer.step()
        scheduler.step()
    assert rates[0] == {True: pytest.approx(1e-3), False: 0.0}
    assert rates[9][False] == 0.0 and rates[10][False] == pytest.approx(1e-4)


def test_layer_wise_lr_decay_scales_by_depth():
    model = ViT(ViTConfig(img_size=8, patch_size=4, in_chans=1, num_classes=2, embed_dim=8, depth=3, num_heads=2))
    names = {id(p): n for n, p in model.named_parameters()}
    scale = {names[id(p)]: g["lr_scale"] for g in param_groups(model, 0.05, layer_decay=0.5) for p in g["params"]}
    assert scale["head.weight"] == 1.0 and scale["norm.weight"] == 1.0
    assert scale["blocks.2.mlp.fc1.weight"] == 0.5 and scale["blocks.0.attn.qkv.weight"] == 0.125
    assert scale["patch_embed.proj.weight"] == scale["pos_embed"] == scale["cls_token"] == 0.0625
    assert len(scale) == len(names)


def test_finetune_cli_then_eval_and_predict(pattern_folder, random_weights, tmp_path, capsys):
    run = tmp_path / "ft"
    code = main(["finetune", "--pretrained", str(random_weights), "--dataset", "imagefolder", "--data.path",
                 str(pattern_folder), "--mode", "full", "--finetune.layer_decay", "0.8", "--finetune.img_size", "48",
                 "--train.epochs", "2", "--train.batch_size", "32", "--train.lr", "1e-3", "--data.num_workers", "0",
                 "--run_dir", str(run), "--quiet"])
    assert code == 0
    out = capsys.readouterr().out
    assert "done:" in out
    info = json.loads((run / "best.json").read_text())
    assert info["model"]["img_size"] == [48, 48] and info["classes"] == ["circle", "cross", "stripes"]
    assert main(["eval", str(run)]) == 0
    assert "circle" in capsys.readouterr().out
    image = next((pattern_folder / "val" / "cross").iterdir())
    assert main(["predict", str(run), str(image), "--json"]) == 0
    result = json.loads(capsys.readouterr().out)[0]
    assert result["classes"][0] in ("circle", "cross", "stripes") and len(result["probs"]) == 3
    assert main(["finetune", "--pretrained", str(random_weights), "--dataset", "imagefolder", "--data.path",
                 str(pattern_folder), "--run_dir", str(run), "--quiet"]) == 2  # never overwrites a run
    assert "already exists" in capsys.readouterr().err


def test_finetune_with_missing_weights_is_a_clear_error(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("VITLAB_WEIGHTS_DIR", str(tmp_path))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    code = main(["finetune", "--pretrained", "deit_tiny", "--dataset", "mnist", "--run_dir", str(tmp_path / "r"),
                 "--quiet"])
    err = capsys.readouterr().err
    assert code == 2 and "deit_tiny_patch16_224.fb_in1k" in err and "pass" in err
    assert not (tmp_path / "r").exists()


def test_predict_with_a_registry_name_uses_the_weights_and_class_names(capsys, monkeypatch):
    from conftest import shared_dir

    weights, data = shared_dir("weights"), shared_dir("data")
    if weights is None or data is None or not (data / "imagenet-samples").is_dir():
        pytest.skip("shared pretrained ViT-Ti/16 or ImageNet samples not available")
    photos = sorted((data / "imagenet-samples").glob("*.JPEG"))[:3]
    wnids = [line.split()[0] for line in (data / "imagenet-samples" / "imagenet_classes.txt").read_text().splitlines()]
    monkeypatch.setenv("VITLAB_WEIGHTS_DIR", str(weights))
    assert main(["predict", "vit_tiny", *map(str, photos), "--json", "--topk", "1"]) == 0
    results = json.loads(capsys.readouterr().out)
    for photo, result in zip(photos, results):
        assert wnids[result["indices"][0]] == photo.name.split("_")[0]
        assert isinstance(result["classes"][0], str) and not result["classes"][0].startswith("class_")
