"""Relational (feature-level) distillation: the experts' geometry of the querying client's images, not their verdict.

Logit KD hands over a teacher's *answer* ("this is a coat"), and on a local look-alike an
over-confident teacher answers wrongly. Its feature space holds something the answer does not:
which images it places near which. Matching the student's pairwise cosine similarities of features
over a batch to an expert's (similarity-preserving KD, Tung & Mori, ICCV 2019; relational KD, Park
et al., CVPR 2019) transfers that geometry with no projector (the two feature spaces never have to
align, so teachers of any width serve) and without imposing the expert's class decision. Five coat
shots give the student five points of the coat region; the expert, which saw thousands of coats and
shirts, says how far from the shirts those points lie.

Gated like ``L_query``: expert ``k``'s relations count only among batch samples whose labels its mask
knows, and only when at least one of them is a query sample (the relation we want is between the
query class and the rest; local-local geometry is ``L_keep``'s business). Expert features over the
transfer set are computed once, up front, and looked up by sample position, like the expert logits.

No label ties two images together, so the class-balanced CE control cannot use this term: a gain over
the control from it is the teachers' alone.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from qkt_flower.qkt.mask import known_class_gates


@dataclass(frozen=True)
class RelationSpec:
    """``weight`` (β_rel) of the relational term in phase 1 / joint; 0 = off."""

    weight: float = 0.0


def cosine_similarities(features: torch.Tensor) -> torch.Tensor:
    """``(B, B)`` cosine similarities between the rows of ``features`` ``(B, D)``, centred over the batch.

    Centring matters: post-ReLU features share a large common direction, so raw cosines are all near 1
    for student and expert alike (measured: the loss was ~1e-3 on a real cell) and say nothing about
    which images lie near which.
    """
    f = features.float().flatten(1)
    f = F.normalize(f - f.mean(dim=0, keepdim=True), dim=1)
    return f @ f.T


def relation_loss(student_features: torch.Tensor, teacher_features: torch.Tensor) -> torch.Tensor:
    """Mean squared difference of the two cosine-similarity matrices over distinct pairs (0 for < 2 rows).

    Each entry lies in [-1, 1], so the loss is on the scale of the CE it is added to (unlike SP-KD's
    row-normalised Gram, which needs a weight in the thousands).
    """
    b = student_features.shape[0]
    if b < 2:
        return student_features.sum() * 0.0
    diff = cosine_similarities(student_features) - cosine_similarities(teacher_features)
    off_diagonal = ~torch.eye(b, dtype=torch.bool, device=diff.device)
    return diff[off_diagonal].pow(2).mean()


class RelationDistillation:
    """``L_rel`` over cached expert features, gated per expert; mean over the experts that apply to a batch."""

    def __init__(
        self,
        expert_features: list[torch.Tensor],
        known_classes: list[tuple[int, ...]],
        query_classes: tuple[int, ...],
        num_classes: int,
    ) -> None:
        if len(expert_features) != len(known_classes):
            raise ValueError("one feature tensor per expert")
        device = expert_features[0].device if expert_features else torch.device("cpu")
        self.features = expert_features
        self.gates = known_class_gates(known_classes, num_classes, device)
        self.query = torch.tensor(query_classes, dtype=torch.long, device=device)

    @property
    def active(self) -> bool:
        """Whether any expert is there to distil from."""
        return bool(self.features)

    def __call__(self, student_features: torch.Tensor, labels: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
        """``L_rel`` for a batch: student features ``(B, D)``, its labels and transfer-set positions."""
        losses = []
        for k, feats in enumerate(self.features):
            rows = self.gates[k, labels]
            if int(rows.sum()) < 2 or not bool(torch.isin(labels[rows], self.query).any()):
                continue
            losses.append(relation_loss(student_features[rows], feats[idx[rows]]))
        if not losses:
            return student_features.sum() * 0.0
        return torch.stack(losses).mean()
