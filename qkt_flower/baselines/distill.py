"""Distillation baselines: vanilla KD from every teacher, and FedDF's ensemble distillation.

Both use the teachers' *averaged* logits over the querying client's own data (cached once, like
QKT's), with no mask and a single phase: they are what QKT's masking and two phases are measured against.
"""

from __future__ import annotations

import copy

import torch
from torch import nn

from qkt_flower.data.loaders import Batch
from qkt_flower.qkt.engine import fit
from qkt_flower.qkt.learn import phase_batches
from qkt_flower.qkt.losses import cross_entropy, kd_loss
from qkt_flower.qkt.method import PhaseSpec
from qkt_flower.qkt.task import QueryTask, cached_logits


def _ensemble_logits(teachers: list[nn.Module], task: QueryTask, device) -> torch.Tensor:
    return cached_logits(teachers, task.data, device).mean(dim=0)


def vanilla_kd(
    local_model: nn.Module,
    task: QueryTask,
    teachers: list[nn.Module],
    spec: PhaseSpec,
    temperature: float,
    seed: int,
    device: torch.device | str = "cpu",
    progress: bool = False,
    beta: float = 1.0,
) -> nn.Module:
    """``CE + β·KD(student ‖ mean teacher logits)`` over all C classes, whole network, one phase.

    Starts from the querying client's local model and uses the same batches (class-balanced) and budget
    as QKT's phase 1, so the difference to QKT is masking, gating, collapsing and phase 2.
    """
    teacher = _ensemble_logits(teachers, task, device)
    student = copy.deepcopy(local_model).to(device)

    def step(model: nn.Module, batch: Batch) -> dict[str, torch.Tensor]:
        logits = model(batch.x)
        return {
            "ce": cross_entropy(logits, batch.y),
            "kd": beta * kd_loss(logits, teacher[batch.idx], temperature),
        }

    fit(
        student,
        phase_batches(task, spec, seed, device),
        step,
        spec.optim,
        spec.epochs,
        desc="vanilla KD",
        progress=progress,
    )
    return student.eval()


def ensemble_distillation(
    start_model: nn.Module,
    task: QueryTask,
    teachers: list[nn.Module],
    spec: PhaseSpec,
    temperature: float,
    seed: int,
    device: torch.device | str = "cpu",
    progress: bool = False,
) -> nn.Module:
    """FedDF-style fusion: distil the teachers' averaged logits into ``start_model`` (the FedAvg average).

    FedDF distils on unlabeled data; here the transfer set is the querying client's own images, labels
    unused (no public data is assumed anywhere in this harness).
    """
    teacher = _ensemble_logits(teachers, task, device)
    student = copy.deepcopy(start_model).to(device)

    def step(model: nn.Module, batch: Batch) -> dict[str, torch.Tensor]:
        return {"kd": kd_loss(model(batch.x), teacher[batch.idx], temperature)}

    fit(
        student, phase_batches(task, spec, seed, device), step, spec.optim, spec.epochs, desc="FedDF", progress=progress
    )
    return student.eval()
