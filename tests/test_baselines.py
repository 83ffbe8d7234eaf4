"""Convolutional baselines: the same pipeline as the ViT, only the network changes."""

from __future__ import annotations

import json

import pytest
import torch
from torchvision.models import resnet18

from vitlab.baselines import ResNet18, SmallCNN, build_model, model_flops
from vitlab.cli import main
from vitlab.config import FinetuneConfig, RunConfig
from vitlab.model import ViT, ViTConfig
from vitlab.training import load_checkpoint, train


def test_resnet18_at_224_is_torchvisions_resnet18():
    cfg = ViTConfig(img_size=224, in_chans=3, num_classes=1000)
    ours, reference = ResNet18(cfg).eval(), resnet18().eval()
    assert ours.num_params() == sum(p.numel() for p in reference.parameters()) == 11_689_512
    # Same weights, same function: our feature stack is torchvision's layers in order, then pooling and the head.
    names = ["conv1", "bn1", "relu", "maxpool", "layer1", "layer2", "layer3", "layer4"]
    state = {}
    for key, value in reference.state_dict().items():
        top, rest = key.split(".", 1)
        state[f"head.{rest}" if top == "fc" else f"features.{names.index(top)}.{rest}"] = value
    ours.load_state_dict(state, strict=True)
    x = torch.randn(2, 3, 224, 224)
    torch.testing.assert_close(ours(x), reference(x), rtol=1e-4, atol=1e-4)
    assert model_flops(ours) == pytest.approx(2 * 1.814e9, rel=0.01)  # torchvision lists 1.81 GMACs


def test_small_images_keep_their_resolution():
    cfg = ViTConfig(img_size=32, patch_size=4, in_chans=3, num_classes=10)
    net = ResNet18(cfg)
    assert net.forward_features(torch.zeros(1, 3, 32, 32)).shape == (1, 512, 4, 4)  # stride-1 stem, no max-pooling
    cnn = SmallCNN(ViTConfig(img_size=28, patch_size=7, in_chans=1, num_classes=10))
    assert cnn.forward_features(torch.zeros(1, 1, 28, 28)).shape == (1, 128, 7, 7)
    assert cnn(torch.zeros(5, 1, 28, 28)).shape == (5, 10)
    with pytest.raises(ValueError, match=r"expected images \(B, 1, H, W\), got \(1, 3, 28, 28\)"):
        cnn(torch.zeros(1, 3, 28, 28))


def test_build_model_picks_the_architecture():
    cfg = ViTConfig(img_size=28, patch_size=7, in_chans=1, num_classes=10, embed_dim=16, depth=1, num_heads=2)
    assert isinstance(build_model(cfg), ViT) and isinstance(build_model(cfg, "cnn"), SmallCNN)
    with pytest.raises(ValueError, match="unknown architecture 'mlp'.*cnn"):
        build_model(cfg, "mlp")
    cnn = build_model(cfg, "cnn")
    cnn.reset_classifier(3)
    assert cnn(torch.zeros(2, 1, 28, 28)).shape == (2, 3)


def test_cnn_trains_through_the_cli_and_its_checkpoint_loads(pattern_folder, tmp_path, capsys):
    run = tmp_path / "cnn"
    argv = ["train", "--arch", "cnn", "--data.dataset", "imagefolder", "--data.path", str(pattern_folder),
            "--model.img_size", "16", "--model.patch_size", "4", "--model.in_chans", "3", "--data.num_workers", "0",
            "--train.epochs", "3", "--train.batch_size", "8", "--train.lr", "0.003", "--quiet", "--run_dir", str(run)]
    assert main(argv) == 0
    sidecar = json.loads((run / "last.json").read_text())
    assert sidecar["arch"] == "cnn" and sidecar["run_config"]["arch"] == "cnn"
    assert sidecar["params"] == SmallCNN(ViTConfig(img_size=16, patch_size=4, in_chans=3, num_classes=3)).num_params()
    model, _ = load_checkpoint(run)
    assert isinstance(model, SmallCNN)

    assert main(["eval", str(run), "--out", str(tmp_path / "eval")]) == 0
    assert json.loads((tmp_path / "eval" / "metrics.json").read_text())["accuracy"] > 0.6  # 3 classes: chance is 1/3
    assert main(["report", str(run)]) == 0
    page = (run / "report.html").read_text()
    assert "convolutional baseline cnn" in page and "Attention (rollout" not in page
    capsys.readouterr()
    image = next((pattern_folder / "val" / "cross").glob("*.png"))
    assert main(["attention", str(run), str(image), "--out", str(tmp_path / "att")]) == 2
    assert "need a ViT" in capsys.readouterr().err


def test_finetuning_a_baseline_is_refused(tmp_path):
    cfg = RunConfig(arch="cnn", finetune=FinetuneConfig())
    with pytest.raises(ValueError, match="cannot train --arch cnn"):
        train(cfg, tmp_path / "run")
