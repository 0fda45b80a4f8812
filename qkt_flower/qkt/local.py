"""Step 0: a client trains its own model on its private data (cross-entropy, seeded batch order)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from qkt_flower.data.augment import batch_augmentation
from qkt_flower.data.datasets import ImageDataset
from qkt_flower.data.loaders import image_batches
from qkt_flower.errors import require
from qkt_flower.qkt.engine import OptimSpec, cross_entropy_step, fit


@dataclass
class LocalSpec:
    """Every client's own training (also the baselines' local budget) and where trained models are cached.

    ``augment``: ``none`` or ``crop_flip`` (pad-4 random crop + flip per batch, the CIFAR recipe; set per dataset in
    ``conf/dataset/``). ``shared_init``: every client starts from the one model the federated baselines start from
    (FL practice; what a weight merge needs), instead of a model initialised from its own seed. ``cache_dir``: keep
    trained local models there, keyed by everything that shapes them (``auto`` = the user's cache folder,
    ``None`` = off).
    """

    epochs: int = 2
    batch_size: int = 64
    optimizer: str = "adam"
    lr: float = 0.001
    momentum: float = 0.9
    weight_decay: float = 0.0
    augment: str = "none"
    shared_init: bool = False
    cache_dir: str | None = "auto"

    @property
    def optim(self) -> OptimSpec:
        """The engine's optimiser spec."""
        return OptimSpec(self.optimizer, self.lr, self.momentum, self.weight_decay)

    def check(self) -> None:
        """Refuse impossible budgets and optimiser settings."""
        require(self.epochs >= 0, "epochs", self.epochs, "an integer >= 0")
        require(self.batch_size >= 1, "batch_size", self.batch_size, "an integer >= 1")
        require(self.augment in ("none", "crop_flip"), "augment", self.augment, "none or crop_flip")
        self.optim.check()


def local_batches(data: ImageDataset, batch_size: int, seed: int, device, augment: str = "none"):
    """A client's shuffled batches of its own data, augmented as ``augment`` says: order and augmentation from ``seed``.

    Step 0 and every federated client round train on these, so FedAvg / FedProx clients see the local recipe.
    """
    return image_batches(data, batch_size, shuffle=True, generator=torch.Generator().manual_seed(seed), device=device,
                         augment=batch_augmentation(augment, seed + 1))  # fmt: skip


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
    augment: str = "none",
) -> list[dict[str, float]]:
    """Train ``model`` in place on ``data``; the batch order (and the augmentation) depend only on ``seed``."""
    batches = local_batches(data, batch_size, seed, device, augment)
    return fit(model.to(device), batches, cross_entropy_step, optim, epochs, desc=desc, progress=progress)
