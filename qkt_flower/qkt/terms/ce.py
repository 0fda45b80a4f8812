"""``L_CE``: cross-entropy on the querying client's own labels (class balance comes from the sampler)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch.nn.functional as F

from qkt_flower.errors import require
from qkt_flower.qkt.task import QueryTask, Teachers
from qkt_flower.qkt.terms.base import LossFn


@dataclass
class CrossEntropy:
    """Plain cross-entropy; ``weight`` scales it in the sum."""

    teacher: ClassVar[bool] = False
    weight: float = 1.0

    def check(self) -> None:
        """Refuse a negative weight."""
        require(self.weight >= 0, "weight", self.weight, "a float >= 0")

    def prepare(self, task: QueryTask, teachers: Teachers) -> LossFn:
        """CE needs nothing but the batch."""
        return lambda out, batch: F.cross_entropy(out.logits, batch.y)
