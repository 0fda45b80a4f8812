"""Expert-labelled mixes of a query shot and a local image: the teachers' boundary, not their verdict.

With a few shots of a query class (a coat) the student learns *that* class, but not where it ends
and a local look-alike (the client's shirts) begins: that boundary is what it gets wrong, calling
shirts coats. An expert that knows both classes holds that boundary. Blending a coat shot and a
shirt, ``x = λ·coat + (1 − λ)·shirt`` (λ ~ U[low, high]), gives inputs *on* the boundary, and the
expert's collapsed answer on them ("how much coat is this?") is exactly the knowledge the shots lack.
Nobody's data moves: the mixes are made of the querying client's own images, the experts only label
them. The term is gated like ``L_query``: expert ``k`` labels a mix only if its mask knows the local
image's class (an expert that never saw shirts would call every blend a coat).

No label exists for a mix, so the class-balanced CE control cannot use them: any gain over the
control from this term is the teachers' alone.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from qkt_flower.data.datasets import ImageDataset
from qkt_flower.data.loaders import normalizer
from qkt_flower.qkt.losses import collapsed_kd, weighted_mean
from qkt_flower.qkt.mask import known_class_gates


@dataclass(frozen=True)
class MixSpec:
    """``weight`` (β_mix) of the term in phase 1; 0 = off. ``low``/``high``: range of the shot's share λ."""

    weight: float = 0.0
    low: float = 0.3
    high: float = 0.7
    batch_size: int = 64


class MixDistillation:
    """``L_mix``: collapsed KD from the experts on fresh query-shot × local-image mixes, one batch per step."""

    def __init__(
        self, experts, data: ImageDataset, query_classes, local_classes, spec: MixSpec, temperature: float, seed: int,
        device,
    ) -> None:  # fmt: skip
        self.experts, self.spec, self.device = experts, spec, torch.device(device)
        self.temperature = temperature
        labels = data.labels
        self.shots = torch.nonzero(torch.isin(labels, torch.tensor(query_classes))).flatten()
        self.locals = torch.nonzero(torch.isin(labels, torch.tensor(local_classes))).flatten()
        self.data, self.labels = data, labels
        self.normalize = normalizer(data)
        self.generator = torch.Generator().manual_seed(seed + 31)
        self.known = known_class_gates([e.known_classes for e in experts], data.num_classes)
        self.keeps = [torch.tensor(e.query_classes, dtype=torch.long, device=self.device) for e in experts]
        for e in experts:  # teachers label in inference mode (BatchNorm running statistics, no dropout)
            e.model.eval()

    @property
    def active(self) -> bool:
        """Whether there is anything to mix (shots, local images and at least one expert)."""
        return self.spec.weight > 0 and len(self.shots) > 0 and len(self.locals) > 0 and len(self.experts) > 0

    def batch(self) -> tuple[torch.Tensor, torch.Tensor]:
        """``(inputs, local labels)`` of one batch of mixes, normalised, on the device."""
        n, g = self.spec.batch_size, self.generator
        q = self.shots[torch.randint(len(self.shots), (n,), generator=g)]
        loc = self.locals[torch.randint(len(self.locals), (n,), generator=g)]
        lam = self.spec.low + (self.spec.high - self.spec.low) * torch.rand(n, generator=g)
        lam = lam.view(-1, 1, 1, 1).to(self.device)
        xq = self.normalize(self.data.images[q].to(self.device))
        xl = self.normalize(self.data.images[loc].to(self.device))
        return lam * xq + (1 - lam) * xl, self.labels[loc]

    def __call__(self, student: nn.Module) -> torch.Tensor:
        """Weighted mean over (expert, mix) pairs whose gate is open; the experts run without gradients."""
        x, local_labels = self.batch()
        student_logits = student(x)
        values, weights = [], []
        for k, expert in enumerate(self.experts):
            with torch.no_grad():
                teacher = expert.model(x).float()
            values.append(collapsed_kd(student_logits, teacher, self.keeps[k], self.temperature))
            weights.append(self.known[k, local_labels].float().to(self.device))
        return weighted_mean(torch.cat(values), torch.cat(weights))
