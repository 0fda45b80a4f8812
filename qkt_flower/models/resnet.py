"""torchvision ResNets adapted to 32x32 inputs (CIFAR stem: 3x3 conv, no max-pool)."""

from __future__ import annotations

import torch
from torch import nn
from torchvision.models.resnet import BasicBlock, ResNet


class CifarResNet(nn.Module):
    """A torchvision :class:`~torchvision.models.resnet.ResNet` split into ``features`` and ``head``."""

    def __init__(self, layers: list[int], in_channels: int, num_classes: int) -> None:
        super().__init__()
        net = ResNet(BasicBlock, layers, num_classes=num_classes)
        net.conv1 = nn.Conv2d(in_channels, 64, kernel_size=3, stride=1, padding=1, bias=False)
        net.maxpool = nn.Identity()
        self.head = net.fc
        net.fc = nn.Identity()
        self.backbone = net

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Globally pooled embedding ``(N, 512)``."""
        return self.backbone(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits ``(N, num_classes)``."""
        return self.head(self.features(x))


def resnet10(in_channels: int, num_classes: int, image_size: int = 32) -> CifarResNet:
    """ResNet-10 (one BasicBlock per stage): ResNet-18's shape at half the depth, for CPU-sized runs."""
    del image_size  # global pooling makes the network size-agnostic
    return CifarResNet([1, 1, 1, 1], in_channels, num_classes)


def resnet18(in_channels: int, num_classes: int, image_size: int = 32) -> CifarResNet:
    """ResNet-18 with the CIFAR stem."""
    del image_size
    return CifarResNet([2, 2, 2, 2], in_channels, num_classes)
