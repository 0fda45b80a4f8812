"""Query learning on the querying client: the one loop every method runs (see :mod:`qkt_flower.qkt.method`).

Transfer set → the student (a copy of the client's model, or composed / merged with its experts) → for each
phase: prepare its terms, train what it trains on class-balanced batches → calibrate the query bias. The control
is the same call with ``method.without_teachers()``.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import torch
from torch import nn

from qkt_flower.data.datasets import ImageDataset
from qkt_flower.data.loaders import Batch, Batches, image_batches
from qkt_flower.qkt.calibrate import calibrate
from qkt_flower.qkt.compose import initial_student
from qkt_flower.qkt.engine import StepFn, fit
from qkt_flower.qkt.method import MethodSpec, PhaseSpec
from qkt_flower.qkt.task import Expert, QueryTask, Teachers, cached_features
from qkt_flower.qkt.terms import Outputs
from qkt_flower.qkt.transfer import transfer_set


def phase_batches(task: QueryTask, spec: PhaseSpec, seed: int, device, inputs: torch.Tensor | None = None) -> Batches:
    """Shuffled batches of the transfer set (or of ``inputs`` in its order); ``spec.balanced``: Q ∪ local drawn equally.

    Other classes the client holds a few images of are not up-weighted. An epoch draws ``spec.epoch_samples``.
    """
    kwargs = dict(
        shuffle=True,
        balanced=spec.balanced,
        balance_classes=(*task.query_classes, *task.local_classes),
        generator=torch.Generator().manual_seed(seed),
        device=device,
        epoch_samples=spec.epoch_samples,
    )
    if inputs is None:
        return image_batches(task.data, spec.batch_size, **kwargs)
    return Batches(inputs, task.data.labels, spec.batch_size, **kwargs)


def features(model: nn.Module, data: ImageDataset, device) -> torch.Tensor:
    """``model.features`` over ``data`` in eval mode (BatchNorm statistics untouched), in data order."""
    return cached_features([model], data, device)[0]


class Trainable(nn.Module):
    """What one phase optimises: the student (or its head) and the parameters its terms learn with it."""

    def __init__(self, model: nn.Module, extras: list[nn.Module]) -> None:
        super().__init__()
        self.model, self.extras = model, nn.ModuleList(extras)


def loss_step(method: MethodSpec, phase: PhaseSpec, task: QueryTask, teachers: Teachers) -> tuple[StepFn, list]:
    """The training step of ``phase`` and the modules its terms learn (``L_feature``'s projections).

    The step returns ``{term: weight · loss}`` for each listed term of non-zero weight.
    In a head-only phase the batches hold the frozen extractor's features, so they are the step's ``features``.
    """
    parts = [
        (name, term.weight, term.prepare(task, teachers))
        for name in phase.terms
        if (term := method.terms.get(name)).weight > 0
    ]
    head_only = phase.trains == "head"

    def step(trainable: Trainable, batch: Batch) -> dict[str, torch.Tensor]:
        model = trainable.model
        feats = batch.x if head_only else model.features(batch.x)
        out = Outputs(model(feats) if head_only else model.head(feats), feats)
        return {name: weight * loss(out, batch) for name, weight, loss in parts}

    return step, [loss for _, _, loss in parts if isinstance(loss, nn.Module)]


def run_phase(
    student: nn.Module,
    method: MethodSpec,
    phase: PhaseSpec,
    task: QueryTask,
    teachers: Teachers,
    seed: int,
    device,
    progress: bool = False,
) -> list[dict[str, float]]:
    """Train ``student`` in place for one phase; returns the engine's per-epoch losses."""
    step, extras = loss_step(method, phase, task, teachers)
    if phase.trains == "head":
        batches = phase_batches(task, phase, seed, device, inputs=features(student, task.data, device))
        trainable = Trainable(student.head, extras)
    else:
        batches = phase_batches(task, phase, seed, device)
        trainable = Trainable(student, extras)
    return fit(trainable, batches, step, phase.optim, phase.epochs, desc=phase.name, progress=progress)


def query_learning(
    local_model: nn.Module,
    task: QueryTask,
    experts: list[Expert],
    method: MethodSpec,
    seed: int,
    device: torch.device | str = "cpu",
    progress: bool = False,
    on_phase_end: Callable[[str, nn.Module], None] | None = None,
) -> tuple[nn.Module, dict]:
    """Run ``method`` on the querying client; returns the new model and ``{"history", "seconds", "calibration_shift"}``.

    ``local_model`` is not modified. Phase ``i`` draws its batches with ``seed + i``. ``on_phase_end(name,
    student)`` is called after each phase and after calibration (e.g. to evaluate intermediate models).
    """
    method = method.runs()
    seconds: dict[str, float] = {}
    history: dict[str, list] = {}
    given = task
    own = task.data  # calibration measures the client's own images, never the jittered copies
    task = transfer_set(task, method.transfer, seed)
    teachers = Teachers(experts if method.teachers else [], local_model, task.data, device)
    if any(method.terms.get(t).teacher for p in method.phases for t in p.terms):
        start = time.perf_counter()
        _ = teachers.logits, teachers.original_logits
        seconds["teacher_logits"] = time.perf_counter() - start
    student = initial_student(local_model, teachers.experts, method.student).to(device)
    for i, phase in enumerate(method.phases):
        start = time.perf_counter()
        history[phase.name] = run_phase(student, method, phase, task, teachers, seed + i, device, progress)
        seconds[phase.name] = time.perf_counter() - start
        if on_phase_end is not None:
            on_phase_end(phase.name, student)
    student.eval()
    shift = calibrate(
        student, own, task.query_classes, task.local_classes, method.calibration, seed, device, method.transfer.jitter
    )
    if on_phase_end is not None and method.calibration.max_false_query is not None:
        on_phase_end("calibrated", student)
    if method.student.distil and teachers.experts:  # the composed model back into one of the client's size
        teacher = Expert(student, task.query_classes, (*task.query_classes, *task.local_classes))
        start = time.perf_counter()
        student, step2 = query_learning(local_model, given, [teacher], method.distilled(), seed, device, progress)
        seconds["distil"] = time.perf_counter() - start
        history.update({f"distil.{name}": losses for name, losses in step2["history"].items()})
        shift = step2["calibration_shift"]
        if on_phase_end is not None:
            on_phase_end("distilled", student)
    return student, {"history": history, "seconds": seconds, "calibration_shift": shift}
