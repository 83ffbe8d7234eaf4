"""Convolutional baselines, trained by the same pipeline as the ViT, and ``build_model`` that picks one.

A ViT result means little without what a user would otherwise train. ``--arch cnn`` and
``--arch resnet18`` train a CNN with exactly the ViT's data, augmentation, optimiser,
schedule and epochs; only the network changes. A baseline reads the input size, channel
count and number of classes from the ``model`` section (the ViT-only fields are ignored)
and offers the parts of the ViT's interface the trainer and the checkpoints use: ``cfg``,
``arch``, ``head``, ``num_params()``, ``no_weight_decay()`` and ``reset_classifier()``.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Literal

import torch
from torch import nn

from vitlab.model import ViT, ViTConfig, count_flops

Arch = Literal["vit", "cnn", "resnet18"]
ARCHITECTURES: tuple[str, ...] = ("vit", "cnn", "resnet18")


class Baseline(nn.Module):
    """A convolutional feature extractor, global average pooling and a linear ``head``."""

    arch = "baseline"

    def __init__(self, cfg: ViTConfig, features: nn.Module, width: int) -> None:
        super().__init__()
        self.cfg = cfg
        self.features = features
        self.head = nn.Linear(width, cfg.num_classes)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Feature map (B, width, h, w)."""
        if x.ndim != 4 or x.shape[1] != self.cfg.in_chans:
            raise ValueError(f"expected images (B, {self.cfg.in_chans}, H, W), got {tuple(x.shape)}")
        return self.features(x)

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        x = x.mean(dim=(2, 3))
        return x if pre_logits else self.head(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))

    def reset_classifier(self, num_classes: int) -> None:
        self.cfg = replace(self.cfg, num_classes=num_classes)
        self.head = nn.Linear(self.head.in_features, num_classes).to(self.head.weight.device)

    def no_weight_decay(self) -> set[str]:
        return set()  # 1-D parameters (batch-norm, biases) are exempt anyway

    def num_params(self, trainable_only: bool = False) -> int:
        return sum(p.numel() for p in self.parameters() if p.requires_grad or not trainable_only)


def conv_bn_relu(c_in: int, c_out: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(c_in, c_out, 3, padding=1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU(inplace=True))


class SmallCNN(Baseline):
    """Three stages of two 3x3 conv-BN-ReLU layers (width, 2x, 4x) with 2x2 max-pooling between:
    the classic small-image CNN (about 0.3M parameters at width 32)."""

    arch = "cnn"

    def __init__(self, cfg: ViTConfig, width: int = 32) -> None:
        w = [width, 2 * width, 4 * width]
        features = nn.Sequential(
            conv_bn_relu(cfg.in_chans, w[0]), conv_bn_relu(w[0], w[0]), nn.MaxPool2d(2),
            conv_bn_relu(w[0], w[1]), conv_bn_relu(w[1], w[1]), nn.MaxPool2d(2),
            conv_bn_relu(w[1], w[2]), conv_bn_relu(w[2], w[2]),
        )
        super().__init__(cfg, features, w[2])


class ResNet18(Baseline):
    """torchvision's ResNet-18; below 64 pixels its stem becomes one stride-1 3x3 conv without max-pooling
    (the usual CIFAR adaptation), so small images keep their resolution."""

    arch = "resnet18"

    def __init__(self, cfg: ViTConfig) -> None:
        from torchvision.models import resnet18

        net = resnet18(num_classes=cfg.num_classes)
        if min(cfg.img_size) < 64:
            net.conv1, net.maxpool = nn.Conv2d(cfg.in_chans, 64, 3, padding=1, bias=False), nn.Identity()
        else:
            net.conv1 = nn.Conv2d(cfg.in_chans, 64, 7, stride=2, padding=3, bias=False)
        features = nn.Sequential(net.conv1, net.bn1, net.relu, net.maxpool, net.layer1, net.layer2, net.layer3, net.layer4)
        super().__init__(cfg, features, 512)


def build_model(cfg: ViTConfig, arch: str = "vit", init: bool = True) -> nn.Module:
    """The ViT of ``cfg``, or a convolutional baseline for the same input and classes. ``init=False``: a ViT
    without random initialisation, for a checkpoint to be loaded into."""
    if arch == "vit":
        return ViT(cfg) if init else ViT.without_init(cfg)
    if arch == "cnn":
        return SmallCNN(cfg)
    if arch == "resnet18":
        return ResNet18(cfg)
    raise ValueError(f"unknown architecture {arch!r}; choose one of {ARCHITECTURES}")


def model_arch(model: nn.Module) -> str:
    return getattr(model, "arch", "vit")


def model_flops(model: nn.Module) -> int:
    """Forward FLOPs for one image of any model ``build_model`` makes (a multiply-add counts 2)."""
    if isinstance(model, ViT):
        return count_flops(model)
    from torch.utils.flop_counter import FlopCounterMode

    with torch.device("meta"):
        probe = build_model(model.cfg, model_arch(model)).eval()
        x = torch.zeros(1, model.cfg.in_chans, *model.cfg.img_size)
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        probe(x)
    return int(counter.get_total_flops())
