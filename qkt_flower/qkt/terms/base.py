"""What every loss term is: a spec with defaults and validation, and ``prepare`` → a loss on (logits, batch).

A term is one dataclass in its own module. Its fields are its options (``weight`` first: the factor it
enters the sum with); ``check`` refuses bad values with relative keys (the config layer adds the path);
``prepare(task, teachers)`` builds, once per phase, the function the training step calls on every batch with the
student's :class:`Outputs` (logits and the features they were computed from). A term that learns parameters of
its own (a projection) returns an ``nn.Module``: they train with the student in that phase.
``teacher = True`` marks a term that carries a teacher's knowledge: the class-balanced CE control is the same
recipe with every such term removed.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import ClassVar, Protocol

import torch

from qkt_flower.data.loaders import Batch
from qkt_flower.qkt.task import QueryTask, Teachers


@dataclass(frozen=True)
class Outputs:
    """The student on one batch: ``features`` (B, D) and ``logits = head(features)`` (B, C)."""

    logits: torch.Tensor
    features: torch.Tensor


LossFn = Callable[[Outputs, Batch], torch.Tensor]
"""``(student outputs, batch) -> scalar``, unweighted."""


class Term(Protocol):
    """The protocol of a loss term (see the module docstring)."""

    teacher: ClassVar[bool]
    weight: float

    def check(self) -> None:
        """Raise :class:`~qkt_flower.errors.ConfigError` (relative key) on a bad option."""

    def prepare(self, task: QueryTask, teachers: Teachers) -> LossFn:
        """The per-batch loss over this phase's transfer set."""
