"""A query-learning method as data: phases (what trains, which terms, what budget) + transfer set + calibration.

The paper's two phases, the joint default, QKT Light, phase 1 alone and the class-balanced CE control are all
values of :class:`MethodSpec` (``conf/method/*.yaml``), run by one loop (:func:`qkt_flower.qkt.learn.query_learning`).
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

from qkt_flower.errors import ConfigError, require
from qkt_flower.qkt.calibrate import CalibrationSpec
from qkt_flower.qkt.compose import StudentSpec
from qkt_flower.qkt.engine import OptimSpec
from qkt_flower.qkt.terms import Terms
from qkt_flower.qkt.transfer import TransferSpec

TRAINS = ("all", "head")
RESERVED = ("calibrated", "distil", "distilled", "teacher_logits")
"""Names a phase may not take: query learning reports the calibration and the teachers' forward passes under them."""


@dataclass
class PhaseSpec:
    """One phase: which parameters train, which loss terms, and its budget.

    ``trains``: ``all`` (the whole network) or ``head`` (the frozen extractor's features are computed once,
    BatchNorm untouched, so an epoch costs a linear layer). ``epoch_samples``: class-balanced draws per epoch
    (``None`` = the transfer set's size: the number of steps then grows with the client's data, ~15x from
    300 to 6000 images per class, and the few query shots are drawn ~15x as often).
    """

    name: str = "joint"
    trains: str = "all"
    terms: list[str] = field(default_factory=lambda: ["ce", "query", "keep"])
    epochs: int = 7
    batch_size: int = 64
    epoch_samples: int | None = 320
    balanced: bool = True
    optimizer: str = "adam"
    lr: float = 0.001
    momentum: float = 0.9
    weight_decay: float = 0.0

    @property
    def optim(self) -> OptimSpec:
        """The engine's optimiser spec."""
        return OptimSpec(self.optimizer, self.lr, self.momentum, self.weight_decay)

    def check(self) -> None:
        """Refuse unknown terms or parameter sets and impossible budgets."""
        require(self.trains in TRAINS, "trains", self.trains, f"one of {list(TRAINS)}")
        bad = [t for t in self.terms if t not in Terms.names()]
        require(bool(self.terms) and not bad, "terms", list(self.terms), f"a non-empty list of {list(Terms.names())}")
        require(self.epochs >= 0, "epochs", self.epochs, "an integer >= 0")
        require(self.batch_size >= 1, "batch_size", self.batch_size, "an integer >= 1")
        require(
            self.epoch_samples is None or self.epoch_samples >= 1,
            "epoch_samples",
            self.epoch_samples,
            "null (the transfer set's size) or an integer >= 1",
        )
        self.optim.check()


@dataclass
class MethodSpec:
    """A named query-learning recipe. ``teachers: false`` drops every teacher term: the class-balanced CE control.

    ``student``: where the student starts (:mod:`qkt_flower.qkt.compose`): a ``copy`` of the client's model,
    ``compose`` (its experts' frozen extractors beside its own; head-only phases) or ``merge`` (its extractor moved
    ``merge_weight`` of the way to its experts' mean).

    The control (:meth:`without_teachers`) keeps the recipe's parameters, budget, transfer set and calibration:
    the gap to QKT is the teachers' contribution, by construction.
    """

    name: str = "qkt"
    teachers: bool = True
    student: StudentSpec = field(default_factory=StudentSpec)
    phases: list[PhaseSpec] = field(default_factory=lambda: [PhaseSpec()])
    terms: Terms = field(default_factory=Terms)
    transfer: TransferSpec = field(default_factory=TransferSpec)
    calibration: CalibrationSpec = field(default_factory=CalibrationSpec)

    def check(self) -> None:
        """Every part's check, keys prefixed with where they sit (``phases.0.epochs``, ``terms.query.weight``).

        Phase names must be unique (history and timings are reported by name), and every phase must train with
        at least one term of non-zero weight (otherwise it has nothing to minimise).
        """
        require(bool(self.phases), "phases", list(self.phases), "a non-empty list of phases")
        names = [p.name for p in self.phases]
        require(
            len(set(names)) == len(names) and not set(names) & set(RESERVED),
            "phases",
            names,
            f"phases with unique names, none of {list(RESERVED)}",
        )
        for i, p in enumerate(self.phases):
            weighted = [t for t in p.terms if t in Terms.names() and self.terms.get(t).weight > 0]
            require(
                bool(weighted) or not p.terms,
                f"phases.{i}.terms",
                list(p.terms),
                "at least one term of non-zero weight (method.terms.<name>.weight)",
            )
        if self.student.kind == "compose":
            require(
                all(p.trains == "head" for p in self.phases),
                "student.kind",
                self.student.kind,
                "copy or merge when a phase trains the whole network (composed extractors stay frozen: "
                "give every phase trains: head)",
            )
        for i, p in enumerate(self.phases):
            require(
                p.trains == "all" or "feature" not in p.terms or self.terms.feature.weight == 0,
                f"phases.{i}.terms",
                list(p.terms),
                "no feature term in a head-only phase (the features it would match are frozen)",
            )
        parts = [(f"phases.{i}", p) for i, p in enumerate(self.phases)]
        for prefix, part in [
            *parts,
            ("student", self.student),
            ("terms", self.terms),
            ("transfer", self.transfer),
            ("calibration", self.calibration),
        ]:
            try:
                part.check()
            except ConfigError as err:
                raise err.under(prefix) from None

    def without_teachers(self) -> MethodSpec:
        """The class-balanced CE control of this recipe: its phases with their non-teacher terms only.

        When the recipe trains the whole network, only those phases are kept (CE on the head after CE on the whole
        network would be a second fine-tuning step with no QKT counterpart); a head-only recipe (QKT Light) keeps
        its head phases. Phases left with no term of non-zero weight are dropped.
        """
        whole = any(p.trains == "all" for p in self.phases)
        phases = [
            replace(p, terms=[t for t in p.terms if not self.terms.get(t).teacher])
            for p in self.phases
            if p.trains == "all" or not whole
        ]
        phases = [p for p in phases if any(self.terms.get(t).weight > 0 for t in p.terms)]
        return replace(self, teachers=False, student=StudentSpec(), phases=phases)

    def distilled(self) -> MethodSpec:
        """The second step of ``student.distil``: the default joint phase on a copy of the client's model.

        Its one expert is the composed model; terms, transfer set and calibration stay the recipe's.
        """
        return replace(self, student=StudentSpec(), phases=[PhaseSpec()])

    def runs(self) -> MethodSpec:
        """The recipe as it trains: itself, or :meth:`without_teachers` when ``teachers`` is off."""
        return self if self.teachers else self.without_teachers()

    def whole_network_budget(self) -> PhaseSpec | None:
        """The first whole-network phase with the epochs of every whole-network phase (``None``: head only).

        The one-round baselines (vanilla KD, FedDF) train for this budget, so a gap to QKT is never a gap in
        training.
        """
        whole = [p for p in self.phases if p.trains == "all"]
        return replace(whole[0], epochs=sum(p.epochs for p in whole)) if whole else None
