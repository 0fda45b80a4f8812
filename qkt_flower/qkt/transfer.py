"""The transfer set: the querying client's own data plus seeded jittered copies.

Query learning balances classes, so 5 query shots are drawn as often as hundreds of local images; jittered
copies of each shot give the student (and the teachers, whose logits are cached on every row) more views of
the class. Jittering only the shots makes the jitter itself a sign of the query class (jittered local images
were then called a query class 3x as often as test images); jittered local copies, labelled with their own
class, take that sign away. QKT and the control share this, so the gap between them stays the teachers'.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from qkt_flower.data.augment import JITTERS, augmented_copies
from qkt_flower.data.datasets import ImageDataset
from qkt_flower.errors import require
from qkt_flower.qkt.task import QueryTask


@dataclass
class TransferSpec:
    """``augment_shots`` copies of each query shot and ``augment_local`` of each local image (0 = none).

    ``jitter``: how a copy is made (:data:`~qkt_flower.data.augment.JITTERS`); the calibration's copies use the same.
    """

    augment_shots: int = 20
    augment_local: int = 1
    jitter: str = "affine"

    def check(self) -> None:
        """Refuse negative copy counts and unknown jitters."""
        require(self.jitter in JITTERS, "jitter", self.jitter, f"one of {list(JITTERS)}")
        require(self.augment_shots >= 0, "augment_shots", self.augment_shots, "an integer >= 0")
        require(self.augment_local >= 0, "augment_local", self.augment_local, "an integer >= 0")


def concat(a: ImageDataset, b: ImageDataset) -> ImageDataset:
    """Rows of ``a`` then ``b`` (same classes and normalisation)."""
    return ImageDataset(torch.cat([a.images, b.images]), torch.cat([a.labels, b.labels]), a.classes, a.mean, a.std)


def transfer_set(task: QueryTask, spec: TransferSpec, seed: int) -> QueryTask:
    """``task`` on its data + ``augment_shots`` copies of each shot, then ``augment_local`` of each local image."""
    data = task.data
    extra = (
        augmented_copies(data, tuple(task.local_classes), spec.augment_local, seed + 1, spec.jitter)
        if spec.augment_local
        else None
    )
    if spec.augment_shots > 0:
        data = concat(data, augmented_copies(data, tuple(task.query_classes), spec.augment_shots, seed, spec.jitter))
    if extra is not None and len(extra):
        data = concat(data, extra)
    return task.with_data(data)
