"""From probe scores to expert masks, and from masks to the experts of each query class.

A mask ``m_k ∈ {0,1}^C`` says which classes teacher ``k`` is an expert on. Rules are plain functions
in :data:`MASK_RULES`, so a new rule is one function and one registry entry.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

import torch

from qkt_flower.errors import require

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


@dataclass
class MaskSpec:
    """The expert-mask rule and its parameters; ``enabled: false`` = every teacher is an expert of every class.

    ``profile_min_share``: a teacher truly "has" a class when it makes up at least this share of its data
    (only used to score the masks' precision and recall, never by the method). ``max_experts``: keep at most this
    many experts per query class, the highest probe scores of that class (``None`` = every teacher the mask
    names; with thousands of clients the experts' weights are what the querying node must receive and hold).
    """

    enabled: bool = True
    rule: str = "relative"
    lam: float = 1.0
    topk: int = 3
    max_ratio: float = 0.1
    profile_min_share: float = 0.05
    max_experts: int | None = None

    def check(self) -> None:
        """Refuse unknown rules and out-of-range parameters."""
        require(self.rule in MASK_RULES, "rule", self.rule, f"one of {sorted(MASK_RULES)}")
        require(self.lam > 0, "lam", self.lam, "a float > 0 (a class is an expert class if its score >= lam/C)")
        require(self.topk >= 1, "topk", self.topk, "an integer >= 1")
        require(0 < self.max_ratio <= 1, "max_ratio", self.max_ratio, "a float in (0, 1]")
        require(0 < self.profile_min_share < 1, "profile_min_share", self.profile_min_share, "a float in (0, 1)")
        require(self.max_experts is None or self.max_experts >= 1, "max_experts", self.max_experts,
                "an integer >= 1 or null")  # fmt: skip

    @property
    def param(self) -> float:
        """The rule's parameter."""
        return {"relative": self.lam, "topk": self.topk, "max_ratio": self.max_ratio}[self.rule]

    def masks(self, scores: Mapping[int, torch.Tensor]) -> dict[int, torch.Tensor]:
        """Every teacher's mask from its probe scores (all-true when masking is off: the "no mask" ablation)."""
        if not self.enabled:
            return {k: torch.ones_like(s, dtype=torch.bool) for k, s in scores.items()}
        return {k: expert_mask(s, self.rule, self.param) for k, s in scores.items()}


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

    The gate of a teacher term (``L_query``): a teacher is over-confident on
    classes it never saw, so its term applies only to samples whose label it knows.
    """
    gates = torch.zeros(len(known_classes), num_classes, dtype=torch.bool, device=device)
    for k, known in enumerate(known_classes):
        gates[k, list(known)] = True
    return gates


def select_experts(
    masks: Mapping[int, torch.Tensor],
    scores: Mapping[int, torch.Tensor],
    query_classes: tuple[int, ...],
    max_experts: int | None = None,
) -> ExpertSelection:
    """Experts ``E_c`` of each query class ``c``; falls back (and logs it) to the top scorer when none.

    With ``max_experts``, only the ``max_experts`` experts of ``c`` with the highest scores on ``c`` are kept
    (ties: the lower client id).
    """
    if not masks:
        raise ValueError("no valid teacher answered the probe")
    experts: dict[int, list[int]] = {}
    fallbacks = []
    for c in query_classes:
        experts[c] = sorted(k for k, m in masks.items() if bool(m[c]))
        if max_experts is not None and len(experts[c]) > max_experts:
            ranked = sorted(experts[c], key=lambda k: (-float(scores[k][c]), k))
            experts[c] = sorted(ranked[:max_experts])
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
