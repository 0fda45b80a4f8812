"""FedAvg's weighted average of state dicts, for fusion baselines that start from the averaged model."""

from __future__ import annotations

import torch


def average_state_dicts(state_dicts: list[dict[str, torch.Tensor]], weights: list[float]) -> dict[str, torch.Tensor]:
    """Weighted mean of floating-point tensors; integer buffers (e.g. BatchNorm's step count) from the first.

    ``weights`` are the clients' sample counts, as in FedAvg.
    """
    if not state_dicts or len(state_dicts) != len(weights) or sum(weights) <= 0:
        raise ValueError("need one positive weight per state dict, and at least one state dict")
    total = float(sum(weights))
    out = {}
    for key, first in state_dicts[0].items():
        if first.is_floating_point():
            # on the first's device: a node may hold its own model on the CPU and the teachers on the GPU
            out[key] = sum(
                sd[key].to(first.device).float() * (w / total) for sd, w in zip(state_dicts, weights, strict=True)
            )
            out[key] = out[key].to(first.dtype)
        else:
            out[key] = first.clone()
    return out
