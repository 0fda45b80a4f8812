"""Step 0: a client trains its own model on its private data (plain cross-entropy)."""

from __future__ import annotations

import torch
from torch import nn

from qkt_flower.data.datasets import ImageDataset
from qkt_flower.data.loaders import image_batches
from qkt_flower.qkt.engine import OptimSpec, cross_entropy_step, fit


def train_local(
    model: nn.Module,
    data: ImageDataset,
    epochs: int,
    batch_size: int,
    optim: OptimSpec,
    seed: int,
    device: torch.device | str = "cpu",
    progress: bool = False,
    desc: str = "local",
) -> list[dict[str, float]]:
    """Train ``model`` in place on ``data``; the batch order depends only on ``seed``."""
    batches = image_batches(
        data, batch_size, shuffle=True, generator=torch.Generator().manual_seed(seed), device=device
    )
    return fit(model.to(device), batches, cross_entropy_step, optim, epochs, desc=desc, progress=progress)
