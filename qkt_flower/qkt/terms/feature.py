"""``L_feature``: the experts' features, matched by a learned projection of the student's (FitNets, Romero et al. 2015).

Per expert ``k`` a linear projection ``P_k`` maps the student's features into ``k``'s feature space; the loss is
``‖n(P_k f_S(x)) − n(f_k(x))‖²`` (``n``: L2-normalised, so the scale of either network does not matter), averaged
over the (expert, sample) pairs the *gate* lets through: only samples whose label is a class ``k``'s mask says it
knows, as for ``L_query``. The projections train with the student and are dropped afterwards.

Unlike ``L_query``, which shows the student the experts' decisions on a handful of shots, this term asks its
representation to take the experts' geometry — the one that separates a query class from its look-alikes — on
every image the expert knows.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from qkt_flower.errors import require
from qkt_flower.qkt.losses import weighted_mean
from qkt_flower.qkt.mask import known_class_gates
from qkt_flower.qkt.task import QueryTask, Teachers
from qkt_flower.qkt.terms.base import Outputs


class FeatureLoss(nn.Module):
    """The per-batch loss; holds one projection per expert (trained with the student)."""

    def __init__(self, targets: list[torch.Tensor], gates: torch.Tensor, student_dim: int) -> None:
        super().__init__()
        self.targets = [F.normalize(t, dim=-1) for t in targets]
        self.gates = gates
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)  # the same start whatever ran before in this process
            self.projections = nn.ModuleList(nn.Linear(student_dim, t.shape[-1]) for t in targets)
        if targets:
            self.projections.to(targets[0].device)

    def forward(self, out: Outputs, batch) -> torch.Tensor:
        """Gated mean over (expert, sample) of the squared distance between normalised features."""
        values, weights = [], []
        for k, (target, projection) in enumerate(zip(self.targets, self.projections, strict=True)):
            mine = F.normalize(projection(out.features.float()), dim=-1)
            values.append((mine - target[batch.idx]).pow(2).sum(dim=-1))
            weights.append(self.gates[k, batch.y].float())
        if not values:
            return out.features.sum() * 0.0
        return weighted_mean(torch.cat(values), torch.cat(weights))


@dataclass
class FeatureDistillation:
    """Options of ``L_feature``: weight and gate (``weight`` 0 = off: every preset but ``qkt_feature``)."""

    teacher: ClassVar[bool] = True
    weight: float = 0.0
    gate: bool = True

    def check(self) -> None:
        """Refuse a negative weight."""
        require(self.weight >= 0, "weight", self.weight, "a float >= 0")

    def prepare(self, task: QueryTask, teachers: Teachers) -> FeatureLoss:
        """Every expert's features over the transfer set, once; a fresh projection per expert."""
        experts, device = teachers.experts, teachers.device
        num_classes = task.data.num_classes
        everything = tuple(range(num_classes))
        gates = known_class_gates([e.known_classes if self.gate else everything for e in experts], num_classes, device)
        return FeatureLoss(teachers.features, gates, teachers.student_dim)
