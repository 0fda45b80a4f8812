"""What query learning works on: the querying client's task and the experts it received.

The transfer set is the querying client's own data (plus jittered copies, :mod:`qkt_flower.qkt.transfer`);
every teacher's logits over it are computed once, up front, and looked up by sample position — exact,
since the copies are made once, and one forward pass per expert per batch cheaper.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

import torch
from torch import nn

from qkt_flower.data.datasets import ImageDataset
from qkt_flower.data.loaders import INFERENCE_BATCH, image_batches


@dataclass(frozen=True)
class QueryTask:
    """The querying client's side: its transfer set (its own training data) and class split."""

    data: ImageDataset
    query_classes: tuple[int, ...]
    local_classes: tuple[int, ...]

    def with_data(self, data: ImageDataset) -> QueryTask:
        """The same task on another transfer set."""
        return QueryTask(data, self.query_classes, self.local_classes)


@dataclass(frozen=True)
class Expert:
    """A relevant teacher as the querying client receives it.

    Attributes
    ----------
    model
        The teacher's network (weights fetched because its mask covers a query class).
    query_classes
        ``Q ∩ expert(k)``: the outputs kept in its masked signal.
    known_classes
        Every class its mask marks (the gate: its term applies to samples of these labels only).
    """

    model: nn.Module
    query_classes: tuple[int, ...]
    known_classes: tuple[int, ...]


@torch.inference_mode()
def cached_logits(
    models: list[nn.Module], data: ImageDataset, device: torch.device | str, batch_size: int = INFERENCE_BATCH
) -> torch.Tensor:
    """Logits ``(K, N, C)`` of each model over ``data``, in data order (one pass per model)."""
    out = _over_data(models, data, device, batch_size, lambda model, x: model(x))
    if not out:
        return torch.empty(0, len(data), data.num_classes, device=device)
    return torch.stack(out)


@torch.inference_mode()
def cached_features(
    models: list[nn.Module], data: ImageDataset, device: torch.device | str, batch_size: int = INFERENCE_BATCH
) -> list[torch.Tensor]:
    """Features ``(N, D_k)`` of each model over ``data`` (eval mode, in data order); dimensions may differ."""
    return _over_data(models, data, device, batch_size, lambda model, x: model.features(x))


def _over_data(models, data: ImageDataset, device, batch_size: int, output) -> list[torch.Tensor]:
    """``output(model, x)`` of each model (eval mode) over every batch of ``data``, concatenated, as float."""
    batches = image_batches(data, batch_size, device=device)
    out = []
    for model in models:
        model.to(device).eval()
        out.append(torch.cat([output(model, b.x).float() for b in batches]))
    return out


class Teachers:
    """The experts and the querying client's original model, with their logits over the transfer set.

    Logits are computed on first use, so a recipe without teacher terms (the control) never runs a teacher.
    """

    def __init__(self, experts: list[Expert], original: nn.Module, data: ImageDataset, device) -> None:
        self.experts, self.original, self.data, self.device = experts, original, data, device

    @cached_property
    def logits(self) -> torch.Tensor:
        """``(K, N, C)``: every expert's logits over the transfer set."""
        return cached_logits([e.model for e in self.experts], self.data, self.device)

    @cached_property
    def features(self) -> list[torch.Tensor]:
        """Every expert's features over the transfer set (``L_feature``), ``(N, D_k)`` each."""
        return cached_features([e.model for e in self.experts], self.data, self.device)

    @property
    def student_dim(self) -> int:
        """Width of the querying client's features (its model's linear head's input)."""
        return self.original.head.in_features

    @cached_property
    def original_logits(self) -> torch.Tensor:
        """``(N, C)``: the querying client's own model (before query learning) over the transfer set."""
        return cached_logits([self.original], self.data, self.device)[0]
