"""The calibration frontier: how much query accuracy *any* query-bias calibration rule can buy inside the local band.

Calibration is one scalar per model (a shift of the query classes' head biases) applied after training, so rules
can be compared without retraining: :func:`trained_cells` trains QKT and the balanced-CE control once per cell
*without* calibration and keeps their logits (and the local model's) on the images a rule may look at — jittered
copies of the client's local images (what the default rule measures), the images themselves — and on the test
view. Each rule of :data:`RULES` then sets the shift from what the client can see, and :func:`score` scores the
shifted test logits: seconds per rule instead of a grid run per rule. The default rule reproduces the grid's
calibrated "QKT (default)" / "balanced-CE control" rows.

The *test oracle* is not a method: per cell, the smallest shift that keeps the test local accuracy within 2 (or 1)
points of the local model — the most query accuracy a single shift can buy inside the band; a rule can only
approach it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace

import torch

from qkt_flower.config import load_config
from qkt_flower.data.loaders import INFERENCE_BATCH, image_batches
from qkt_flower.errors import ConfigError
from qkt_flower.experiments import steps
from qkt_flower.experiments.pipeline import prepare
from qkt_flower.experiments.tables import ACC
from qkt_flower.experiments.tables import summarize as summarize_cells
from qkt_flower.qkt.calibrate import (
    accuracy_keeping_shift,
    calibration_images,
    non_query_argmax,
    query_bias_shift,
    query_bias_shift_among,
    query_margins,
)
from qkt_flower.qkt.engine import predict_logits
from qkt_flower.qkt.evaluate import accuracy_report
from qkt_flower.qkt.method import MethodSpec


@dataclass
class Logits:
    """One trained model and the local model on one set of images: ``new`` / ``local`` logits, labels."""

    new: torch.Tensor
    local: torch.Tensor
    labels: torch.Tensor

    def only(self, classes: tuple[int, ...]) -> Logits:
        """The rows whose label is one of ``classes``."""
        keep = torch.isin(self.labels, torch.tensor(classes, dtype=self.labels.dtype))
        return Logits(self.new[keep], self.local[keep], self.labels[keep])

    def right_otherwise(self, query: tuple[int, ...]) -> torch.Tensor:
        """The new model's best non-query class is the label (right once it stops calling it a query class)."""
        return non_query_argmax(self.new, query) == self.labels

    def local_right(self) -> torch.Tensor:
        """The local model gets the row right."""
        return self.local.argmax(-1) == self.labels


@dataclass
class Cell:
    """What a rule may use (``calibration``: jittered copies, ``own``: the images) and the test view it is scored on.

    ``calibration`` and ``own`` hold local-class rows only (a query image called a query class is no error).
    """

    query: tuple[int, ...]
    local_classes: tuple[int, ...]
    budget: float
    calibration: Logits
    own: Logits
    test: Logits


Rule = Callable[[Cell], float]


def false_queries(scale: float = 1.0) -> Rule:
    """The default rule: at most ``scale × budget`` of the calibration images called a query class."""
    return lambda c: query_bias_shift(query_margins(c.calibration.new, c.query), scale * c.budget)


def no_calibration(c: Cell) -> float:
    """No shift: the uncalibrated model as trained."""
    return 0.0


def net_false_queries(c: Cell) -> float:
    """Count only the images the local model gets right: the others cost no local accuracy."""
    return query_bias_shift_among(query_margins(c.calibration.new, c.query), c.calibration.local_right(), c.budget)


def spend_gain(on: str) -> Rule:
    """Lower the default shift while the accuracy the new model gained (on ``on`` images) pays for false queries.

    The false queries are counted on the calibration images, among those the new model gets right otherwise;
    the gain is its accuracy there without query predictions minus the local model's, on the jittered copies
    (``on="calibration"``) or on the client's own images (``on="own"``). Never above the default shift.
    """

    def rule(c: Cell) -> float:
        cap = false_queries()(c)
        gained = getattr(c, on)
        gain = float(gained.right_otherwise(c.query).float().mean() - gained.local_right().float().mean())
        if gain < 0:
            return cap
        margins = query_margins(c.calibration.new, c.query)
        return min(cap, query_bias_shift_among(margins, c.calibration.right_otherwise(c.query), gain))

    return rule


def test_oracle(points: float) -> Rule:
    """Per cell, the smallest shift keeping the *test* local accuracy within ``points`` (``inf``: none does)."""

    def rule(c: Cell) -> float:
        t = c.test.only(c.local_classes)
        shift = accuracy_keeping_shift(query_margins(t.new, c.query), t.right_otherwise(c.query), t.local_right(),
                                       points / 100)  # fmt: skip
        return float("inf") if shift is None else shift

    return rule


RULES: dict[str, Rule] = {
    "false queries ≤ budget (default)": false_queries(),
    "false queries ≤ 2 × budget": false_queries(2.0),
    "no calibration": no_calibration,
    "net false queries ≤ budget (local model right)": net_false_queries,
    "spend the gain on jittered copies": spend_gain("calibration"),
    "spend the gain on own images": spend_gain("own"),
    "TEST ORACLE: every cell within 2 points": test_oracle(2.0),
    "TEST ORACLE: every cell within 1 point": test_oracle(1.0),
}


def uncalibrated(method: MethodSpec) -> MethodSpec:
    """``method`` with calibration off: the rules set the shift afterwards, on the same trained model."""
    return replace(method, calibration=replace(method.calibration, max_false_query=None))


def budget(cfg) -> float:
    """The rules' false-query budget, ``method.calibration.max_false_query``; a :class:`ConfigError` when off."""
    share = cfg.method.calibration.max_false_query
    if share is None:
        raise ConfigError("method.calibration.max_false_query", None, "a share in [0, 1): it is the rules' budget")
    return share


def _logits(model, data, device) -> tuple[torch.Tensor, torch.Tensor]:
    logits, labels = predict_logits(model, image_batches(data, INFERENCE_BATCH, device=device))
    return logits.cpu(), labels.cpu()


def trained_cells(overrides: list[str], device: torch.device | None = None) -> dict[str, Cell]:
    """QKT and the control of ``method``, trained uncalibrated on one (partition, seed, query) cell."""
    cfg = load_config(overrides)
    share = budget(cfg)
    exp = prepare(cfg, device)
    fed, s, local = exp.fed, exp.fed.scenario, exp.models[exp.client]
    masks, selection = steps.choose_experts(cfg, exp.scores()[0], s.query_classes)
    method = uncalibrated(cfg.method)
    trained = {
        "QKT": steps.learn_query(cfg, fed, local, steps.make_experts(exp.models, masks, selection), exp.device,
                                 method=method)[0],
        "balanced-CE control": steps.learn_query(cfg, fed, local, [], exp.device, method=method.without_teachers())[0],
    }  # fmt: skip
    own = steps.query_task(fed).data  # what calibration measures: the client's own images, before the transfer set
    jittered = calibration_images(own, s.local_classes, cfg.method.calibration, cfg.seed, cfg.method.transfer.jitter)
    views = {"calibration": jittered, "own": own, "test": exp.view}
    before = {view: _logits(local, data, exp.device) for view, data in views.items()}  # the local model's, once

    def logits(model, view: str) -> Logits:
        local_logits, labels = before[view]
        return Logits(_logits(model.eval(), views[view], exp.device)[0], local_logits, labels)

    return {name: Cell(s.query_classes, s.local_classes, share, logits(model, "calibration").only(s.local_classes),
                       logits(model, "own").only(s.local_classes), logits(model, "test"))
            for name, model in trained.items()}  # fmt: skip


def score(cell: Cell, shift: float) -> dict[str, float | None]:
    """Test accuracies (%) after lowering the query biases by ``shift``, Δlocal vs the local model, the shift."""
    logits = cell.test.new.clone()
    logits[:, list(cell.query)] -= shift
    after = accuracy_report(logits, cell.test.labels, cell.query, cell.local_classes)
    before = accuracy_report(cell.test.local, cell.test.labels, cell.query, cell.local_classes)
    row: dict[str, float | None] = {k: 100 * after[k] for k in ACC}
    row["local_delta"] = row["local_acc"] - 100 * before["local_acc"]
    row["shift"] = None if shift == float("inf") else shift  # None: no single shift keeps the band (oracle)
    return row


def cell_rows(cells: dict[str, Cell], rules: dict[str, Rule] = RULES) -> list[dict]:
    """Every (method, rule) of one cell as a row: ``method``, ``rule`` and :func:`score`'s columns."""
    return [{"method": method, "rule": name, **score(cell, rule(cell))}
            for method, cell in cells.items() for name, rule in rules.items()]  # fmt: skip


def summarize(rows: list[dict]) -> list[dict]:
    """Mean ± std per (partition, method, rule) over cells, with the worst cell's Δlocal."""
    keys = ("partition", "method", "rule")
    table = summarize_cells(rows, keys)
    for agg in table:
        agg["worst_local_delta"] = min(r["local_delta"] for r in rows if all(r[k] == agg[k] for k in keys))
    return table


def markdown(table: list[dict]) -> str:
    """One Markdown table per partition: query ± std, local, Δlocal, worst cell's Δlocal, mean(q,l)."""
    lines = []
    for part in dict.fromkeys(r["partition"] for r in table):
        lines += [f"**{part}**", "", "| method | rule | query | local | Δlocal | worst cell Δlocal | mean(q,l) |",
                  "|---|---|---|---|---|---|---|"]  # fmt: skip
        for r in (r for r in table if r["partition"] == part):
            lines.append(f"| {r['method']} | {r['rule']} | {r['query_acc']:.1f} ± {r['query_acc_std']:.1f} | "
                         f"{r['local_acc']:.1f} | {r['local_delta']:+.1f} | {r['worst_local_delta']:+.1f} | "
                         f"{r['mean_acc']:.1f} |")  # fmt: skip
        lines.append("")
    return "\n".join(lines)
