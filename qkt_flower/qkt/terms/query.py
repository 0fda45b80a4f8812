"""``L_query``: every expert's view of its query classes, collapsed to ``[Q ∩ expert(k)] ⊕ other``.

Per expert ``k`` and sample, ``KL(p̃_k ‖ p̃_S)·τ²`` on the collapsed distributions (only the query classes
``k`` is an expert of are kept), averaged over the (expert, sample) pairs that pass two filters:

- *gate* — only samples whose label is a class ``k``'s mask says it knows. Teachers are over-confident on
  classes they never saw; ungated, they teach "this local look-alike is the query class".
- *consistent* — only samples ``k`` itself labels correctly (the client knows its labels): an over-confident
  "this shirt is a coat" is never distilled, while the shots it recognises and its margins are.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch

from qkt_flower.errors import require
from qkt_flower.qkt.losses import collapsed_kd, weighted_mean
from qkt_flower.qkt.mask import known_class_gates
from qkt_flower.qkt.task import QueryTask, Teachers
from qkt_flower.qkt.terms.base import LossFn, Outputs

STRENGTH_LIMIT = 80.0
"""``weight·τ²`` at which the prototype predicted the query class for everything: refused."""


@dataclass
class QueryDistillation:
    """Options of ``L_query``: weight β, temperature τ, logit standardisation, gate, consistency."""

    teacher: ClassVar[bool] = True
    weight: float = 1.0
    temperature: float = 2.0
    standardize: bool = False
    gate: bool = True
    consistent: bool = True

    def check(self) -> None:
        """Refuse a negative weight, a non-positive τ, and ``weight·τ²`` that swamps cross-entropy."""
        require(self.weight >= 0, "weight", self.weight, "a float >= 0")
        require(self.temperature > 0, "temperature", self.temperature, "a float > 0")
        strength = self.weight * self.temperature**2
        require(
            strength < STRENGTH_LIMIT,
            "weight",
            self.weight,
            f"weight * temperature^2 < {STRENGTH_LIMIT:g} (it is {strength:g}; ~80 made the model predict "
            "the query class for everything)",
        )

    def prepare(self, task: QueryTask, teachers: Teachers) -> LossFn:
        """Gates and consistency per (expert, sample), computed once over the transfer set."""
        logits, experts = teachers.logits, teachers.experts
        device, num_classes = logits.device, task.data.num_classes
        everything = tuple(range(num_classes))
        gates = known_class_gates([e.known_classes if self.gate else everything for e in experts], num_classes, device)
        keeps = [torch.tensor(e.query_classes, dtype=torch.long, device=device) for e in experts]
        right = logits.argmax(dim=-1) == task.data.labels.to(device).unsqueeze(0) if self.consistent else None

        def loss(out: Outputs, batch) -> torch.Tensor:
            values, weights = [], []
            for k, keep in enumerate(keeps):
                values.append(collapsed_kd(out.logits, logits[k, batch.idx], keep, self.temperature, self.standardize))
                weight = gates[k, batch.y].float()
                if right is not None:
                    weight = weight * right[k, batch.idx].float()
                weights.append(weight)
            if not values:
                return out.logits.sum() * 0.0
            return weighted_mean(torch.cat(values), torch.cat(weights))

        return loss
