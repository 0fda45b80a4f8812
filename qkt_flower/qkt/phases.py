"""QKT's query learning on the querying client: phase 1, phase 2, QKT Light and a joint ablation.

Each phase is a loss step for :func:`qkt_flower.qkt.engine.fit`, returning named losses. Teacher
(and original-model) logits over the transfer set are computed once, up front, and looked up by
sample position: the transfer set is ``q``'s own data plus jittered copies made once, up front, so this is exact and
saves one forward pass per expert per batch.

Terms (see ``shared/QKT.md``):

- ``L_query`` — for every expert ``k``, collapsed KD on ``[Q ∩ expert(k)] ⊕ other``; *gated*: only on
  samples whose label is a class ``k``'s mask says it knows (teachers are over-confident on classes
  they never saw; ungated, they teach "this local look-alike is the query class").
- ``L_keep`` — collapsed KD from the *original* ``f_q`` on ``[local classes] ⊕ other``, only on samples
  whose label is not a query class (the original model gets the query shots wrong).
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable
from dataclasses import dataclass, replace

import torch
from torch import nn

from qkt_flower.data.augment import augmented_copies
from qkt_flower.data.datasets import ImageDataset
from qkt_flower.data.loaders import INFERENCE_BATCH, Batch, Batches, image_batches
from qkt_flower.qkt.calibrate import CalibrationSpec, calibrate_query_bias, calibration_images, split_holdout
from qkt_flower.qkt.engine import OptimSpec, cross_entropy_step, fit
from qkt_flower.qkt.losses import collapsed_kd, cross_entropy, weighted_mean
from qkt_flower.qkt.mask import known_class_gates
from qkt_flower.qkt.mixing import MixDistillation, MixSpec
from qkt_flower.qkt.relation import RelationDistillation, RelationSpec
from qkt_flower.qkt.synthesis import SynthesisSpec, invert_experts

MODES = ("two-phase", "phase1", "light", "joint")


@dataclass(frozen=True)
class Expert:
    """A relevant teacher as the querying client receives it.

    Attributes
    ----------
    model
        The teacher's network (weights fetched because its mask covers a query class).
    query_classes
        ``Q ∩ expert(k)``: the outputs kept in its masked signal.
    known_classes
        Every class its mask marks (the gate: its term applies to samples of these labels only).
    """

    model: nn.Module
    query_classes: tuple[int, ...]
    known_classes: tuple[int, ...]


@dataclass(frozen=True)
class PhaseSpec:
    """Budget, optimiser and loss weights of one phase (``gamma`` is used by phase 2 / joint only).

    ``epoch_samples``: samples per epoch (``None`` = the transfer set's size). With it, the number of
    steps no longer grows with the client's data: on full Fashion-MNIST an epoch is ~15x longer than
    on 300 images per class, and the few query shots are drawn ~15x as often.
    """

    epochs: int
    batch_size: int
    optim: OptimSpec
    beta: float = 1.0
    gamma: float = 0.0
    balanced: bool = True
    balance_over: str = "task"
    epoch_samples: int | None = None


@dataclass(frozen=True)
class QKTSpec:
    """Everything query learning needs besides data and experts."""

    mode: str
    phase1: PhaseSpec
    phase2: PhaseSpec
    temperature: float = 2.0
    standardize: bool = False
    gate: bool = True
    consistent: bool = False
    weighting: str = "uniform"
    keep_balanced: bool = False
    keep_consistent: bool = False
    calibration: CalibrationSpec = CalibrationSpec()
    synthesis: SynthesisSpec = SynthesisSpec()
    augment_shots: int = 0
    augment_local: int = 0
    mix: MixSpec = MixSpec()
    relation: RelationSpec = RelationSpec()

    def whole_network_budget(self) -> PhaseSpec:
        """Phase 1's batches and optimiser for as many epochs as ``mode`` trains the whole network.

        The teacher-free control, the fine-tuned baselines and the distillation baselines get this
        budget, so a gap to QKT is never a gap in training: ``joint`` trains the whole network for
        phase 1's + phase 2's epochs, ``two-phase`` / ``phase1`` for phase 1's (phase 2 only trains the
        head), ``light`` for none of its own — the baselines then get phase 1's.
        """
        if self.mode == "joint":
            return replace(self.phase1, epochs=self.phase1.epochs + self.phase2.epochs)
        return self.phase1


@dataclass(frozen=True)
class QueryTask:
    """The querying client's side: its transfer set (its own training data) and class split."""

    data: ImageDataset
    query_classes: tuple[int, ...]
    local_classes: tuple[int, ...]

    def with_data(self, data: ImageDataset) -> QueryTask:
        """The same task on another transfer set."""
        return QueryTask(data, self.query_classes, self.local_classes)


def concat(a: ImageDataset, b: ImageDataset) -> ImageDataset:
    """Rows of ``a`` then ``b`` (same classes and normalisation)."""
    return ImageDataset(torch.cat([a.images, b.images]), torch.cat([a.labels, b.labels]), a.classes, a.mean, a.std)


def with_augmented_shots(data: ImageDataset, query_classes, copies: int, seed: int) -> ImageDataset:
    """``data`` plus ``copies`` augmented versions of each query shot (none when ``copies`` is 0)."""
    if copies <= 0:
        return data
    return concat(data, augmented_copies(data, tuple(query_classes), copies, seed))


def with_augmented_rows(data: ImageDataset, task: QueryTask, shots: int, local: int, seed: int) -> ImageDataset:
    """``data`` plus ``shots`` jittered copies of each query shot and ``local`` of each local image.

    Jittering only the shots makes the jitter itself a sign of the query class (jittered local images
    are then called a query class 3x as often as test images); jittered local copies, labelled with their
    own class, take that sign away. QKT and the control share this.
    """
    extra = augmented_copies(data, tuple(task.local_classes), local, seed + 1) if local > 0 else None
    data = with_augmented_shots(data, task.query_classes, shots, seed)
    return concat(data, extra) if extra is not None and len(extra) else data


def prepare_transfer_set(task: QueryTask, experts: list[Expert], spec: QKTSpec, seed: int, device):
    """``(task for the phases, the client's own images to calibrate on, info)``.

    Sets aside the calibration hold-out (``spec.calibration.holdout``), adds the jittered shots and
    local copies (:func:`with_augmented_rows`) and the images inverted from the experts
    (``spec.synthesis.per_class``, labelled with their query class).
    """
    info: dict[str, float] = {}
    data, own = calibration_split(task, spec.calibration, seed)
    data = with_augmented_rows(data, task, spec.augment_shots, spec.augment_local, seed)
    if spec.synthesis.per_class > 0 and experts:
        start = time.perf_counter()
        synthetic = invert_experts([(e.model, e.query_classes) for e in experts], data, spec.synthesis, seed, device)
        data = concat(data, synthetic)
        info["synthesis"] = time.perf_counter() - start
        info["synthetic_images"] = len(synthetic)
    return task.with_data(data), own, info


def calibration_split(task: QueryTask, spec: CalibrationSpec, seed: int) -> tuple[ImageDataset, ImageDataset]:
    """``(images query learning trains on, the client's own images the calibration measures)``.

    The measured images are the hold-out when there is one, else the client's data as it is — never
    the jittered copies the transfer set adds (``augment_local``): calibrating on jittered copies
    (``spec.augment``) of those would measure copies of copies, a different and larger set than the
    same option gives without ``augment_local``.
    """
    data, held = split_holdout(task.data, task.local_classes, spec.holdout, seed)
    return data, held if held is not None else data


def calibrate(
    student: nn.Module, task: QueryTask, own: ImageDataset, spec: CalibrationSpec, seed: int, device
) -> float:
    """Apply :func:`~qkt_flower.qkt.calibrate.calibrate_query_bias` if enabled; returns the bias shift.

    Measured on ``own`` (from :func:`calibration_split`), or on jittered copies of it with
    ``spec.augment``; QKT and the control share this, so they are calibrated alike.
    """
    if spec.max_false_query is None:
        return 0.0
    images = calibration_images(own, task.local_classes, spec, seed)
    return calibrate_query_bias(student, images, task.query_classes, task.local_classes, spec.max_false_query, device)


@torch.inference_mode()
def cached_logits(
    models: list[nn.Module], data: ImageDataset, device: torch.device | str, batch_size: int = INFERENCE_BATCH
):
    """Logits ``(K, N, C)`` of each model over ``data``, in data order (one pass per model)."""
    batches = image_batches(data, batch_size, device=device)
    out = []
    for model in models:
        model.to(device).eval()
        out.append(torch.cat([model(b.x).float() for b in batches]))
    if not out:
        return torch.empty(0, len(data), data.num_classes, device=device)
    return torch.stack(out)


def consistent_pairs(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """``(K, N)`` bool: expert ``k`` predicts sample ``n``'s true label (its argmax over all classes).

    The querying client knows the labels of its transfer set, so it can see where a teacher is wrong.
    Over-confident teachers call a local look-alike (a shirt) the query class (a coat); distilling that
    answer is exactly what teaches the student to lose its local classes. Dropping the pairs a teacher
    gets wrong keeps its query-class knowledge (the shots it recognises, the margins on samples it gets
    right) without its confusions.
    """
    if logits.numel() == 0:
        return torch.zeros(logits.shape[:2], dtype=torch.bool, device=logits.device)
    return logits.argmax(dim=-1) == labels.to(logits.device).unsqueeze(0)


WEIGHTINGS = ("uniform", "shots")


def shot_trust(experts: list[Expert], logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """``(K,)``: how much expert ``k`` believes the querying client's own query shots, ``mean p_k(y | x)``.

    The server picks experts from noise probes alone; the querying client holds a few labelled images
    of each query class and can check them. An expert that gives the shots low probability (a teacher
    whose mask marks the class but that holds a handful of its images, or confuses it with a
    look-alike) would teach the student that the shots are "other"; its terms are down-weighted in
    proportion. An expert with no shot to judge it by (0 shots) keeps weight 1.
    """
    labels = labels.to(logits.device)
    trust = torch.ones(len(experts), device=logits.device)
    for k, e in enumerate(experts):
        rows = torch.isin(labels, torch.tensor(e.query_classes, device=labels.device))
        if bool(rows.any()):
            p = logits[k, rows].float().softmax(dim=-1)
            trust[k] = p.gather(1, labels[rows].unsqueeze(1)).mean()
    return trust


def gated_classes(experts: list[Expert], spec: QKTSpec, num_classes: int) -> list[tuple[int, ...]]:
    """Per expert, the labels its terms may apply to: its known classes, or every class with ``spec.gate`` off."""
    every = tuple(range(num_classes))
    return [e.known_classes if spec.gate else every for e in experts]


class QueryDistillation:
    """``L_query`` over cached expert logits: collapsed, gated, averaged over (expert, sample) pairs."""

    def __init__(
        self,
        experts: list[Expert],
        logits: torch.Tensor,
        num_classes: int,
        spec: QKTSpec,
        labels: torch.Tensor | None = None,
    ) -> None:
        device = logits.device
        self.logits = logits
        self.consistent = None
        if spec.consistent:
            if labels is None:
                raise ValueError("consistent KD needs the transfer set's labels")
            self.consistent = consistent_pairs(logits, labels)
        self.trust = None
        if spec.weighting == "shots":
            if labels is None:
                raise ValueError("shot-weighted KD needs the transfer set's labels")
            self.trust = shot_trust(experts, logits, labels)
        self.keeps = [torch.tensor(e.query_classes, dtype=torch.long, device=device) for e in experts]
        self.gates = known_class_gates(gated_classes(experts, spec, num_classes), num_classes, device)
        self.temperature, self.standardize = spec.temperature, spec.standardize

    def __call__(self, student_logits: torch.Tensor, batch: Batch) -> torch.Tensor:
        """Weighted mean of per-sample collapsed KD over the experts whose gate lets the sample through."""
        values, weights = [], []
        for k, keep in enumerate(self.keeps):
            values.append(
                collapsed_kd(student_logits, self.logits[k, batch.idx], keep, self.temperature, self.standardize)
            )
            weight = self.gates[k, batch.y].float()
            if self.consistent is not None:
                weight = weight * self.consistent[k, batch.idx].float()
            if self.trust is not None:
                weight = weight * self.trust[k]
            weights.append(weight)
        if not values:
            return student_logits.sum() * 0.0
        return weighted_mean(torch.cat(values), torch.cat(weights))


def balanced_logits(logits: torch.Tensor, labels: torch.Tensor, classes: tuple[int, ...]) -> torch.Tensor:
    """``logits`` with ``classes``' columns logit-adjusted to a uniform prior over them (Menon et al., ICLR 2021).

    Subtracts ``log p(c) − mean_c log p(c)``, with ``p(c)`` the share of class ``c`` among ``labels`` of
    ``classes``: the relative odds between these classes become what a model trained on balanced data
    would give, and their log-mass against the other columns is unchanged on average.
    """
    idx = torch.tensor(classes, dtype=torch.long, device=logits.device)
    counts = torch.stack([(labels == c).sum() for c in classes]).to(logits.device).float().clamp_min(1.0)
    log_prior = torch.log(counts / counts.sum())
    out = logits.clone()
    out[:, idx] -= log_prior - log_prior.mean()
    return out


class KeepDistillation:
    """``L_keep``: the original model's view of the local classes, on non-query samples only.

    With ``spec.keep_balanced`` the original's logits are first logit-adjusted to a uniform prior over the
    local classes: it was trained on the client's imbalanced shares, and its boundaries between local
    classes carry that imbalance, which class-balanced fine-tuning removes and plain ``L_keep`` puts back.
    With ``spec.keep_consistent`` the term skips the samples the original model gets wrong (like
    consistent KD for the experts): it should keep what the client knows, not its mistakes.
    """

    def __init__(self, original_logits: torch.Tensor, task: QueryTask, spec: QKTSpec) -> None:
        device = original_logits.device
        # where the original model is right, computed before any adjustment (its own verdict)
        self.right = original_logits.argmax(dim=1) == task.data.labels.to(device) if spec.keep_consistent else None
        if spec.keep_balanced:
            original_logits = balanced_logits(original_logits, task.data.labels, task.local_classes)
        self.logits = original_logits
        self.keep = torch.tensor(task.local_classes, dtype=torch.long, device=device)
        self.query = torch.tensor(task.query_classes, dtype=torch.long, device=device)
        self.temperature, self.standardize = spec.temperature, spec.standardize

    def __call__(self, student_logits: torch.Tensor, batch: Batch) -> torch.Tensor:
        """Collapsed KD to the original model, weighted 0 on query-class samples (and, if consistent, its errors)."""
        kd = collapsed_kd(student_logits, self.logits[batch.idx], self.keep, self.temperature, self.standardize)
        weight = (~torch.isin(batch.y, self.query)).float()
        if self.right is not None:
            weight = weight * self.right[batch.idx].float()
        return weighted_mean(kd, weight)


def _step(
    query: QueryDistillation | None,
    beta: float,
    keep: KeepDistillation | None,
    gamma: float,
    mix: MixDistillation | None = None,
    relation: tuple[float, RelationDistillation] | None = None,
):
    """Build a loss step ``CE + beta·L_query (+ gamma·L_keep) (+ β_mix·L_mix) (+ β_rel·L_rel)`` for ``fit``.

    With ``relation`` the model is run as ``head(features(x))`` (the same network) so the term sees
    the features the logits come from.
    """

    def step(model: nn.Module, batch: Batch) -> dict[str, torch.Tensor]:
        features = model.features(batch.x) if relation is not None else None
        logits = model(batch.x) if features is None else model.head(features)
        losses = {"ce": cross_entropy(logits, batch.y)}
        if features is not None:
            losses["relation"] = relation[0] * relation[1](features, batch.y, batch.idx)
        if query is not None and beta > 0:
            losses["query"] = beta * query(logits, batch)
        if keep is not None and gamma > 0:
            losses["keep"] = gamma * keep(logits, batch)
        if mix is not None and mix.active:
            losses["mix"] = mix.spec.weight * mix(model)
        return losses

    return step


BALANCE_OVER = ("task", "present")


def phase_batches(task: QueryTask, spec: PhaseSpec, seed: int, device, inputs: torch.Tensor | None = None) -> Batches:
    """Shuffled (class-balanced if ``spec.balanced``) batches of the transfer set, or of ``inputs`` in its order.

    An epoch draws ``spec.epoch_samples`` samples (``None`` = the transfer set's size).

    ``spec.balance_over``: ``task`` balances the query and local classes only (other classes the client
    holds a few images of are not up-weighted), ``present`` every class present.
    """
    gen = torch.Generator().manual_seed(seed)
    classes = (*task.query_classes, *task.local_classes) if spec.balance_over == "task" else None
    kwargs = dict(shuffle=True, balanced=spec.balanced, balance_classes=classes, generator=gen, device=device,
                  epoch_samples=spec.epoch_samples)  # fmt: skip
    if inputs is None:
        return image_batches(task.data, spec.batch_size, **kwargs)
    return Batches(inputs, task.data.labels, spec.batch_size, **kwargs)


@torch.inference_mode()
def _features(model: nn.Module, data: ImageDataset, device) -> torch.Tensor:
    model.eval()
    return torch.cat([model.features(b.x).float() for b in image_batches(data, INFERENCE_BATCH, device=device)])


def _mixing(experts, task: QueryTask, spec: QKTSpec, seed: int, device) -> MixDistillation | None:
    """``L_mix`` for phase 1 / joint when ``spec.mix.weight > 0`` (see ``qkt/mixing.py``)."""
    if spec.mix.weight <= 0:
        return None
    return MixDistillation(experts, task.data, task.query_classes, task.local_classes, spec.mix, spec.temperature,
                           seed, device)  # fmt: skip


def _relation(experts, task: QueryTask, spec: QKTSpec, device) -> tuple[float, RelationDistillation] | None:
    """``(β_rel, L_rel)`` for phase 1 / joint when ``spec.relation.weight > 0`` (see ``qkt/relation.py``)."""
    if spec.relation.weight <= 0 or not experts:
        return None
    features = [_features(e.model, task.data, device) for e in experts]
    known = gated_classes(experts, spec, task.data.num_classes)
    return spec.relation.weight, RelationDistillation(features, known, task.query_classes, task.data.num_classes)


def phase1(student, task, experts, logits, spec: QKTSpec, seed, device, progress=False):
    """Query-focused distillation: whole network, ``CE + β₁·L_query``, class-balanced batches."""
    query = QueryDistillation(experts, logits, task.data.num_classes, spec, task.data.labels)
    step = _step(query, spec.phase1.beta, None, 0.0, _mixing(experts, task, spec, seed, device),
                 _relation(experts, task, spec, device))  # fmt: skip
    return fit(
        student,
        phase_batches(task, spec.phase1, seed, device),
        step,
        spec.phase1.optim,
        spec.phase1.epochs,
        desc="phase 1",
        progress=progress,
    )


def phase2(student, original_logits, task, experts, logits, spec: QKTSpec, seed, device, progress=False):
    """Head refinement on the frozen extractor: ``CE + β₂·L_query + γ·L_keep``, only ``student.head`` trained.

    Features of the transfer set are computed once (extractor in eval mode, BatchNorm statistics
    untouched), so each epoch costs a linear layer.
    """
    feats = _features(student, task.data, device)
    query = QueryDistillation(experts, logits, task.data.num_classes, spec, task.data.labels)
    keep = KeepDistillation(original_logits, task, spec)
    step = _step(query, spec.phase2.beta, keep, spec.phase2.gamma)
    batches = phase_batches(task, spec.phase2, seed + 1, device, inputs=feats)
    return fit(student.head, batches, step, spec.phase2.optim, spec.phase2.epochs, desc="phase 2", progress=progress)


def joint(student, original_logits, task, experts, logits, spec: QKTSpec, seed, device, progress=False):
    """Ablation: one phase on the whole network with ``CE + β₁·L_query + γ·L_keep`` (phase-2 γ)."""
    query = QueryDistillation(experts, logits, task.data.num_classes, spec, task.data.labels)
    keep = KeepDistillation(original_logits, task, spec)
    step = _step(query, spec.phase1.beta, keep, spec.phase2.gamma, _mixing(experts, task, spec, seed, device),
                 _relation(experts, task, spec, device))  # fmt: skip
    epochs = spec.phase1.epochs + spec.phase2.epochs
    return fit(
        student,
        phase_batches(task, spec.phase1, seed, device),
        step,
        spec.phase1.optim,
        epochs,
        desc="joint",
        progress=progress,
    )


def query_learning(
    local_model: nn.Module,
    task: QueryTask,
    experts: list[Expert],
    spec: QKTSpec,
    seed: int,
    device: torch.device | str = "cpu",
    progress: bool = False,
    on_phase_end: Callable[[str, nn.Module], None] | None = None,
) -> tuple[nn.Module, dict]:
    """Run QKT on the querying client; returns the new model and ``{"history", "seconds"}``.

    ``on_phase_end(name, student)`` is called after each phase (e.g. to evaluate intermediate models).

    ``local_model`` is not modified. ``spec.mode``: ``two-phase`` (phase 1 then phase 2), ``phase1``
    (no phase 2), ``light`` (phase 2 only, on the original extractor: it cannot create features
    for a class the extractor never saw), ``joint`` (one phase, whole network, all terms).
    """
    if spec.mode not in MODES:
        raise ValueError(f"QKT mode {spec.mode!r} is not one of {MODES}")
    seconds: dict[str, float] = {}
    history: dict[str, list] = {}
    task, own, prep = prepare_transfer_set(task, experts, spec, seed, device)
    if "synthesis" in prep:
        seconds["synthesis"] = prep["synthesis"]
    start = time.perf_counter()
    logits = cached_logits([e.model for e in experts], task.data, device)
    original_logits = cached_logits([local_model], task.data, device)[0]
    seconds["teacher_logits"] = time.perf_counter() - start
    student = copy.deepcopy(local_model).to(device)
    phases = {
        "two-phase": ["phase1", "phase2"],
        "phase1": ["phase1"],
        "light": ["phase2"],
        "joint": ["joint"],
    }[spec.mode]
    for name in phases:
        start = time.perf_counter()
        if name == "phase1":
            history[name] = phase1(student, task, experts, logits, spec, seed, device, progress)
        elif name == "phase2":
            history[name] = phase2(student, original_logits, task, experts, logits, spec, seed, device, progress)
        else:
            history[name] = joint(student, original_logits, task, experts, logits, spec, seed, device, progress)
        seconds[name] = time.perf_counter() - start
        if on_phase_end is not None:
            on_phase_end(name, student)
    student.eval()
    shift = calibrate(student, task, own, spec.calibration, seed, device)
    if on_phase_end is not None and spec.calibration.max_false_query is not None:
        on_phase_end("calibrated", student)
    return student, {"history": history, "seconds": seconds, "calibration_shift": shift}


def balanced_finetune(
    local_model: nn.Module,
    task: QueryTask,
    spec: PhaseSpec,
    seed: int,
    device="cpu",
    progress=False,
    calibration: CalibrationSpec | None = None,
    augment_shots: int = 0,
    augment_local: int = 0,
):
    """Control: class-balanced CE fine-tuning on ``q``'s own data, no teacher.

    Part of any few-shot gain is just rebalancing; this control measures that part. With
    ``calibration`` it gets the same hold-out and query-bias calibration as QKT, so the gap to QKT is
    the teachers' contribution alone.
    """
    calibration = calibration or CalibrationSpec()
    data, own = calibration_split(task, calibration, seed)
    task = task.with_data(with_augmented_rows(data, task, augment_shots, augment_local, seed))
    student = copy.deepcopy(local_model).to(device)
    fit(
        student,
        phase_batches(task, spec, seed, device),
        cross_entropy_step,
        spec.optim,
        spec.epochs,
        desc="balanced CE",
        progress=progress,
    )
    student.eval()
    calibrate(student, task, own, calibration, seed, device)
    return student
