"""The one training loop and the one evaluation loop.

A training step is injected: ``step(model, batch) -> {loss name: scalar tensor}``. The engine sums
the named losses, back-propagates, steps the optimiser, and logs per-epoch means. Local training, every phase
of every method (a head-only phase passes the head as the model) and the baselines run through :func:`fit`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager, nullcontext
from contextvars import ContextVar
from dataclasses import dataclass

import torch
from torch import nn
from tqdm.auto import tqdm

from qkt_flower.data.loaders import Batch
from qkt_flower.errors import require

StepFn = Callable[[nn.Module, Batch], dict[str, torch.Tensor]]

_AMP_DTYPE: ContextVar[torch.dtype | None] = ContextVar("qkt_amp_dtype", default=None)


@contextmanager
def mixed_precision(dtype: torch.dtype | None) -> Iterator[None]:
    """Within this block :func:`fit` runs forward passes and losses under ``torch.autocast(dtype)``.

    ``None`` = full precision. Only bfloat16 is offered by the config (same exponent range as float32,
    so no gradient scaler is needed); the caller decides per device (see ``experiments.steps.precision``).
    """
    token = _AMP_DTYPE.set(dtype)
    try:
        yield
    finally:
        _AMP_DTYPE.reset(token)


def _autocast(model: nn.Module):
    dtype = _AMP_DTYPE.get()
    if dtype is None:
        return nullcontext()
    device = next(model.parameters()).device
    return torch.autocast(device_type=device.type, dtype=dtype)


OPTIMIZERS = ("adam", "sgd")


@dataclass(frozen=True)
class OptimSpec:
    """How to optimise: ``name`` is ``sgd`` or ``adam``."""

    name: str = "adam"
    lr: float = 1e-3
    momentum: float = 0.9
    weight_decay: float = 0.0

    def check(self) -> None:
        """Refuse an unknown optimiser, a non-positive learning rate or a negative weight decay."""
        require(self.name in OPTIMIZERS, "optimizer", self.name, f"one of {list(OPTIMIZERS)}")
        require(self.lr > 0, "lr", self.lr, "a float > 0")
        require(self.weight_decay >= 0, "weight_decay", self.weight_decay, "a float >= 0")

    def build(self, params: Iterable[torch.nn.Parameter]) -> torch.optim.Optimizer:
        """Optimiser over ``params``."""
        if self.name == "sgd":
            return torch.optim.SGD(params, lr=self.lr, momentum=self.momentum, weight_decay=self.weight_decay)
        if self.name == "adam":
            return torch.optim.Adam(params, lr=self.lr, weight_decay=self.weight_decay)
        raise ValueError(f"optimizer {self.name!r} is not one of ['adam', 'sgd']")


def fit(
    model: nn.Module,
    batches: Iterable[Batch],
    step: StepFn,
    optim: OptimSpec,
    epochs: int,
    desc: str = "train",
    progress: bool = False,
) -> list[dict[str, float]]:
    """Train ``model`` for ``epochs`` over ``batches`` with losses from ``step``.

    Returns
    -------
    list of dict
        Per epoch, the mean of each named loss and of their sum (``loss``).
    """
    optimizer = optim.build(model.parameters())
    history = []
    bar = tqdm(range(epochs), desc=desc, disable=not progress, leave=False)
    for _ in bar:
        model.train()
        sums: dict[str, float] = {}
        count = 0
        for batch in batches:
            with _autocast(model):
                losses = step(model, batch)
                total = sum(losses.values())
            optimizer.zero_grad(set_to_none=True)
            total.backward()
            optimizer.step()
            for name, value in losses.items():
                sums[name] = sums.get(name, 0.0) + float(value.detach())
            sums["loss"] = sums.get("loss", 0.0) + float(total.detach())
            count += 1
        epoch = {k: v / max(count, 1) for k, v in sums.items()}
        history.append(epoch)
        bar.set_postfix(loss=f"{epoch.get('loss', float('nan')):.3f}")
    return history


@torch.inference_mode()
def predict_logits(model: nn.Module, batches: Iterable[Batch]) -> tuple[torch.Tensor, torch.Tensor]:
    """Logits and labels of every batch, on CPU, in batch order (model in eval mode)."""
    model.eval()
    logits, labels = [], []
    for batch in batches:
        logits.append(model(batch.x).float().cpu())
        labels.append(batch.y.cpu())
    return torch.cat(logits), torch.cat(labels)


def cross_entropy_step(model: nn.Module, batch: Batch) -> dict[str, torch.Tensor]:
    """Supervised step: ``{"ce": CE(model(x), y)}`` (local training, the balanced-CE control)."""
    return {"ce": torch.nn.functional.cross_entropy(model(batch.x), batch.y)}
