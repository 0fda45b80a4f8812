"""A small CNN for 28x28 (or 32x32) images: two conv blocks, a 128-d embedding, a linear head."""

from __future__ import annotations

import torch
from torch import nn

from qkt_flower.models.pooling import MaxPool2x2


class SmallCNN(nn.Module):
    """Conv(32)-BN-ReLU-Pool, Conv(64)-BN-ReLU-Pool, FC(128)-ReLU, then ``head``.

    BatchNorm keeps training stable at the learning rates the phases use and gives the experts
    feature statistics that data-free inversion can match.
    """

    def __init__(self, in_channels: int, num_classes: int, image_size: int = 28, width: int = 32) -> None:
        super().__init__()
        side = image_size // 4
        self.body = nn.Sequential(
            nn.Conv2d(in_channels, width, 3, padding=1, bias=False),
            nn.BatchNorm2d(width),
            nn.ReLU(inplace=True),
            MaxPool2x2(),
            nn.Conv2d(width, 2 * width, 3, padding=1, bias=False),
            nn.BatchNorm2d(2 * width),
            nn.ReLU(inplace=True),
            MaxPool2x2(),
            nn.Flatten(),
            nn.Linear(2 * width * side * side, 128),
            nn.ReLU(inplace=True),
        )
        self.head = nn.Linear(128, num_classes)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Embedding ``(N, 128)`` fed to the head."""
        return self.body(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits ``(N, num_classes)``."""
        return self.head(self.features(x))
