"""From probe scores to expert masks, and from masks to the experts of each query class.

A mask ``m_k ∈ {0,1}^C`` says which classes teacher ``k`` is an expert on. Rules are plain functions
in :data:`MASK_RULES`, so a new rule is one function and one registry entry.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

import torch

log = logging.getLogger(__name__)


def relative_rule(scores: torch.Tensor, lam: float) -> torch.Tensor:
    """``m[c] = s[c] >= lam / C`` (the paper's threshold: a class counts if it beats lam x uniform)."""
    return scores >= lam / scores.numel()


def topk_rule(scores: torch.Tensor, k: int) -> torch.Tensor:
    """The ``k`` highest-scoring classes (useful when the number of classes per client is known)."""
    mask = torch.zeros_like(scores, dtype=torch.bool)
    mask[torch.topk(scores, min(int(k), scores.numel())).indices] = True
    return mask


def max_ratio_rule(scores: torch.Tensor, ratio: float) -> torch.Tensor:
    """``m[c] = s[c] >= ratio * max(s)``: scale-free, robust to how peaked the answer is."""
    return scores >= ratio * scores.max()


MASK_RULES: dict[str, Callable[[torch.Tensor, float], torch.Tensor]] = {
    "relative": relative_rule,
    "topk": topk_rule,
    "max_ratio": max_ratio_rule,
}


def expert_mask(scores: torch.Tensor, rule: str, param: float) -> torch.Tensor:
    """Boolean mask of length C for one teacher's probe ``scores``."""
    if rule not in MASK_RULES:
        raise ValueError(f"mask rule {rule!r} is not one of {sorted(MASK_RULES)}")
    return MASK_RULES[rule](scores, param)


@dataclass
class ExpertSelection:
    """Which teachers are experts of each query class.

    Attributes
    ----------
    experts
        ``{class: [teacher ids]}`` for every query class.
    fallbacks
        Query classes no mask covered; their expert is the teacher with the highest score on them.
    """

    experts: dict[int, list[int]]
    fallbacks: list[int] = field(default_factory=list)

    @property
    def relevant(self) -> list[int]:
        """Teachers whose weights must be fetched (sorted, unique)."""
        return sorted({k for ks in self.experts.values() for k in ks})

    def classes_of(self, teacher: int) -> list[int]:
        """Query classes ``teacher`` is an expert on (the outputs kept in its masked signal)."""
        return sorted(c for c, ks in self.experts.items() if teacher in ks)


def known_class_gates(
    known_classes: Sequence[Sequence[int]], num_classes: int, device: torch.device | str = "cpu"
) -> torch.Tensor:
    """``(K, C)`` booleans: row ``k`` marks the classes teacher ``k``'s mask says it knows.

    The gate of every teacher term (``L_query``, ``L_mix``, ``L_rel``): a teacher is over-confident on
    classes it never saw, so its term applies only to samples whose label it knows.
    """
    gates = torch.zeros(len(known_classes), num_classes, dtype=torch.bool, device=device)
    for k, known in enumerate(known_classes):
        gates[k, list(known)] = True
    return gates


def select_experts(
    masks: Mapping[int, torch.Tensor], scores: Mapping[int, torch.Tensor], query_classes: tuple[int, ...]
) -> ExpertSelection:
    """Experts ``E_c`` of each query class ``c``; falls back (and logs it) to the top scorer when none."""
    if not masks:
        raise ValueError("no valid teacher answered the probe")
    experts: dict[int, list[int]] = {}
    fallbacks = []
    for c in query_classes:
        experts[c] = sorted(k for k, m in masks.items() if bool(m[c]))
        if not experts[c]:
            best = max(scores, key=lambda k: float(scores[k][c]))
            log.warning(
                "no teacher is an expert on query class %d; falling back to teacher %d (score %.3f)",
                c,
                best,
                float(scores[best][c]),
            )
            experts[c] = [best]
            fallbacks.append(c)
    return ExpertSelection(experts, fallbacks)


def mask_quality(masks: Mapping[int, torch.Tensor], profiles: Mapping[int, torch.Tensor]) -> dict[str, float]:
    """Micro precision and recall of the masks against each teacher's true class profile (bool, length C)."""
    tp = fp = fn = 0
    for k, m in masks.items():
        truth = profiles[k]
        tp += int((m & truth).sum())
        fp += int((m & ~truth).sum())
        fn += int((~m & truth).sum())
    precision = tp / (tp + fp) if tp + fp else 1.0
    recall = tp / (tp + fn) if tp + fn else 1.0
    return {
        "precision": precision,
        "recall": recall,
        "true_positives": tp,
        "false_positives": fp,
        "false_negatives": fn,
    }
