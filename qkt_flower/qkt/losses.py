"""Distillation losses as plain functions on logits (testable on 3-class tensors by hand).

The central one is the *collapsed* KD: keep the outputs of a few classes, merge every other class
into one "other" bucket, and compare teacher and student on that reduced distribution. It is how a
teacher transfers what it knows about the query classes without imposing its view of the rest.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from qkt_flower.qkt.probe import standardize_logits


def _prepare(logits: torch.Tensor, temperature: float, standardize: bool) -> torch.Tensor:
    return (standardize_logits(logits) if standardize else logits) / temperature


def collapsed_log_probs(logits: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
    """Log-probabilities of ``[classes in keep] ⊕ other`` from (already tempered) logits ``(N, C)``.

    ``other`` gets ``log sum_{c not in keep} p(c)``, computed with logsumexp for stability. When
    ``keep`` covers every class there is no ``other`` column.
    """
    log_p = torch.log_softmax(logits, dim=-1)
    rest = torch.ones(logits.shape[-1], dtype=torch.bool, device=logits.device)
    rest[keep] = False
    kept = log_p[:, keep]
    if not rest.any():
        return kept
    other = torch.logsumexp(log_p[:, rest], dim=-1, keepdim=True)
    return torch.cat([kept, other], dim=-1)


def kl_per_sample(teacher_log_p: torch.Tensor, student_log_p: torch.Tensor) -> torch.Tensor:
    """``KL(teacher ‖ student)`` per row, from log-probabilities."""
    return (teacher_log_p.exp() * (teacher_log_p - student_log_p)).sum(dim=-1)


def kd_loss(
    student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float, standardize: bool = False
) -> torch.Tensor:
    """Hinton KD: ``KL(softmax(t/T) ‖ softmax(s/T)) · T²``, mean over the batch."""
    t = torch.log_softmax(_prepare(teacher_logits, temperature, standardize), dim=-1)
    s = torch.log_softmax(_prepare(student_logits, temperature, standardize), dim=-1)
    return kl_per_sample(t, s).mean() * temperature**2


def collapsed_kd(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    keep: torch.Tensor,
    temperature: float,
    standardize: bool = False,
) -> torch.Tensor:
    """Per-sample collapsed KD ``KL(p̃_teacher ‖ p̃_student) · T²`` over ``keep ⊕ other`` (no reduction)."""
    t = collapsed_log_probs(_prepare(teacher_logits, temperature, standardize), keep)
    s = collapsed_log_probs(_prepare(student_logits, temperature, standardize), keep)
    return kl_per_sample(t, s) * temperature**2


def weighted_mean(values: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """``sum(w·v) / sum(w)``; zero (with a gradient path) when every weight is zero."""
    total = weights.sum()
    if float(total) == 0.0:
        return (values * 0.0).sum()
    return (values * weights).sum() / total


def cross_entropy(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Plain cross-entropy (class balance comes from the sampler, not from loss weights)."""
    return F.cross_entropy(logits, labels)
