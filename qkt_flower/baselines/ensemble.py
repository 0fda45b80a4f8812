"""The ensemble baseline: average the teachers' logits; nothing is trained."""

from __future__ import annotations

import torch
from torch import nn


class LogitEnsemble(nn.Module):
    """Predicts with the mean logits of ``members`` (every teacher, no mask).

    It needs every teacher's weights at the querying client and K forward passes per input: the
    upper end of what "just use the others' models" can give in one round.
    """

    def __init__(self, members: list[nn.Module]) -> None:
        super().__init__()
        if not members:
            raise ValueError("an ensemble needs at least one member")
        self.members = nn.ModuleList(members)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Mean of the members' logits."""
        return torch.stack([m(x) for m in self.members]).mean(dim=0)
