"""Step 0: a client trains its own model on its private data (cross-entropy, optionally outlier exposure)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from qkt_flower.data.datasets import ImageDataset
from qkt_flower.data.loaders import Batch, image_batches
from qkt_flower.qkt.engine import OptimSpec, StepFn, cross_entropy_step, fit


def shuffled_patches(x: torch.Tensor, generator: torch.Generator, grid: int = 4) -> torch.Tensor:
    """Each image cut into ``grid × grid`` patches and put back in a random order (its own per image).

    Local statistics stay (strokes, textures), the object does not: an outlier that looks like the
    client's data, unlike the probe's Gaussian noise (on which teachers must stay over-confident for the
    data-free mask to work). Rows and columns past ``grid`` whole patches are cropped.
    """
    n, c, h, w = x.shape
    ph, pw = h // grid, w // grid
    x = x[:, :, : ph * grid, : pw * grid]
    patches = x.reshape(n, c, grid, ph, grid, pw).permute(0, 2, 4, 1, 3, 5).reshape(n, grid * grid, c, ph, pw)
    order = torch.argsort(torch.rand(n, grid * grid, generator=generator), dim=1).to(x.device)
    patches = patches[torch.arange(n, device=x.device)[:, None], order]
    return patches.reshape(n, grid, grid, c, ph, pw).permute(0, 3, 1, 4, 2, 5).reshape(n, c, grid * ph, grid * pw)


def outlier_exposure_step(weight: float, generator: torch.Generator) -> StepFn:
    """CE on the batch + ``weight`` × CE to uniform on its patch-shuffled copy (outlier exposure).

    Hendrycks et al., ICLR 2019, with self-made outliers: a client has no outlier dataset.
    """

    def step(model: nn.Module, batch: Batch) -> dict[str, torch.Tensor]:
        ce = F.cross_entropy(model(batch.x), batch.y)
        uniform_ce = -F.log_softmax(model(shuffled_patches(batch.x, generator)), dim=-1).mean(dim=-1).mean()
        return {"ce": ce, "oe": weight * uniform_ce}

    return step


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
    outlier_exposure: float = 0.0,
) -> list[dict[str, float]]:
    """Train ``model`` in place on ``data``; the batch order (and the outliers) depend only on ``seed``."""
    batches = image_batches(
        data, batch_size, shuffle=True, generator=torch.Generator().manual_seed(seed), device=device
    )
    step = cross_entropy_step
    if outlier_exposure > 0:
        step = outlier_exposure_step(outlier_exposure, torch.Generator().manual_seed(seed + 17))
    return fit(model.to(device), batches, step, optim, epochs, desc=desc, progress=progress)
