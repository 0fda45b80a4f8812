"""Accuracy on the querying client's test view, split into query classes and local classes.

All predictions are full C-way: a query-class image counts as correct only if the model picks the
query class among all C classes. ``mean`` = (query + local) / 2, so a method cannot look good by
trading one for the other.
"""

from __future__ import annotations

import torch
from torch import nn

from qkt_flower.data.datasets import ImageDataset
from qkt_flower.data.loaders import INFERENCE_BATCH, image_batches
from qkt_flower.qkt.engine import predict_logits


def _accuracy(pred: torch.Tensor, labels: torch.Tensor, classes: tuple[int, ...]) -> float:
    sel = torch.isin(labels, torch.tensor(classes, dtype=labels.dtype))
    return float((pred[sel] == labels[sel]).float().mean()) if sel.any() else float("nan")


def accuracy_report(
    logits: torch.Tensor, labels: torch.Tensor, query_classes: tuple[int, ...], local_classes: tuple[int, ...]
) -> dict[str, float | dict[str, float]]:
    """Query, local, overall and mean accuracy (fractions in [0, 1]) plus per-class accuracy."""
    pred = logits.argmax(dim=-1)
    query = _accuracy(pred, labels, query_classes)
    local = _accuracy(pred, labels, local_classes)
    per_class = {str(c): _accuracy(pred, labels, (c,)) for c in sorted({*query_classes, *local_classes})}
    return {
        "query_acc": query,
        "local_acc": local,
        "overall_acc": float((pred == labels).float().mean()) if labels.numel() else float("nan"),
        "mean_acc": (query + local) / 2,
        "per_class_acc": per_class,
    }


def evaluate_view(
    model: nn.Module,
    view: ImageDataset,
    query_classes: tuple[int, ...],
    local_classes: tuple[int, ...],
    batch_size: int = INFERENCE_BATCH,
    device: torch.device | str = "cpu",
) -> dict[str, float | dict[str, float]]:
    """:func:`accuracy_report` of ``model`` on the test view ``view``."""
    logits, labels = predict_logits(model.to(device), image_batches(view, batch_size, device=device))
    return accuracy_report(logits, labels, query_classes, local_classes)
