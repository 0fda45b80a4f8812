"""One client round of FedAvg (``mu = 0``) or FedProx (``mu > 0``), starting from the global model."""

from __future__ import annotations

import torch
from torch import nn

from qkt_flower.data.datasets import ImageDataset
from qkt_flower.data.loaders import Batch
from qkt_flower.qkt.engine import OptimSpec, fit
from qkt_flower.qkt.local import local_batches


def proximal_step(global_params: list[torch.Tensor], mu: float):
    """Loss step ``CE + mu/2 · ||w − w_global||²`` (FedProx's proximal term; plain CE when ``mu = 0``)."""

    def step(model: nn.Module, batch: Batch) -> dict[str, torch.Tensor]:
        losses = {"ce": nn.functional.cross_entropy(model(batch.x), batch.y)}
        if mu > 0:
            drift = sum((w - g).pow(2).sum() for w, g in zip(model.parameters(), global_params, strict=True))
            losses["proximal"] = 0.5 * mu * drift
        return losses

    return step


def train_round(
    model: nn.Module,
    data: ImageDataset,
    epochs: int,
    batch_size: int,
    optim: OptimSpec,
    seed: int,
    mu: float = 0.0,
    device: torch.device | str = "cpu",
    augment: str = "none",
) -> list[dict[str, float]]:
    """Train ``model`` (holding the global weights) in place for one federated round (local training's augmentation)."""
    model.to(device)
    global_params = [p.detach().clone() for p in model.parameters()]
    batches = local_batches(data, batch_size, seed, device, augment)
    return fit(model, batches, proximal_step(global_params, mu), optim, epochs)
