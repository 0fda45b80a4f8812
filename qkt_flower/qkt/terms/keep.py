"""``L_keep``: the querying client's original model, on its local classes, on non-query samples only.

Collapsed KD from the original ``f_q`` over ``[local classes] ⊕ other``, so the old decision boundaries
survive query learning. Query-class samples are skipped: the original model gets the query shots wrong, and
distilling it on them erased the query class (query accuracy fell to 0–3 %).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch

from qkt_flower.errors import require
from qkt_flower.qkt.losses import collapsed_kd, weighted_mean
from qkt_flower.qkt.task import QueryTask, Teachers
from qkt_flower.qkt.terms.base import LossFn, Outputs


@dataclass
class KeepDistillation:
    """Options of ``L_keep``: weight γ, temperature τ, logit standardisation."""

    teacher: ClassVar[bool] = True
    weight: float = 1.0
    temperature: float = 2.0
    standardize: bool = False

    def check(self) -> None:
        """Refuse a negative weight and a non-positive τ."""
        require(self.weight >= 0, "weight", self.weight, "a float >= 0")
        require(self.temperature > 0, "temperature", self.temperature, "a float > 0")

    def prepare(self, task: QueryTask, teachers: Teachers) -> LossFn:
        """The original model's logits over the transfer set, looked up per batch."""
        logits = teachers.original_logits
        keep = torch.tensor(task.local_classes, dtype=torch.long, device=logits.device)
        query = torch.tensor(task.query_classes, dtype=torch.long, device=logits.device)

        def loss(out: Outputs, batch) -> torch.Tensor:
            kd = collapsed_kd(out.logits, logits[batch.idx], keep, self.temperature, self.standardize)
            return weighted_mean(kd, (~torch.isin(batch.y, query)).float())

        return loss
