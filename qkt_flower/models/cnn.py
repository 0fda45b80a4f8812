"""A small CNN for 28x28 (or 32x32) images: two conv blocks, a 128-d embedding, a linear head."""

from __future__ import annotations

import torch
from torch import nn

from qkt_flower.models.pooling import MaxPool2x2


class SmallCNN(nn.Module):
    """Conv(32)-BN-ReLU-Pool, Conv(64)-BN-ReLU-Pool, FC(128)-ReLU, then ``head``.

    BatchNorm keeps training stable at the learning rates the phases use and gives the experts
    feature statistics that data-free inversion can match.

    Each block pools before its ReLU: the same function and the same gradients, bit for bit (a maximum commutes
    with ReLU, and the gradient reaches the same element: the window's first maximum when it is positive, none
    otherwise), but the ReLU and its backward pass touch a quarter of the values (a training step 0.5-2.3 % faster
    on CPU, measured; ``tests/models/test_pooling.py`` trains both orders to the same bits).
    """

    def __init__(self, in_channels: int, num_classes: int, image_size: int = 28, width: int = 32) -> None:
        super().__init__()
        side = image_size // 4
        self.body = nn.Sequential(
            nn.Conv2d(in_channels, width, 3, padding=1, bias=False),
            nn.BatchNorm2d(width),
            MaxPool2x2(),
            nn.ReLU(inplace=True),
            nn.Conv2d(width, 2 * width, 3, padding=1, bias=False),
            nn.BatchNorm2d(2 * width),
            MaxPool2x2(),
            nn.ReLU(inplace=True),
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
