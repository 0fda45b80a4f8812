"""How much can *any* query-bias calibration give? Rules compared on the same trained models, with a test oracle.

Every cell of the interference grid trains QKT and the balanced-CE control once, on today's recipe but
*without* calibration, and keeps their logits (and the local model's) on the calibration images (jittered
copies of the client's local images, as the default measures), on the client's own images and on the test
view. Each rule then sets the query-bias shift from what the client can see, and the shifted test logits are
scored — seconds per rule instead of a grid run per rule. The default rule reproduces the grid's
"QKT (default)" / "balanced-CE control" rows.

The *test oracle* is not a method: per cell, the smallest shift that keeps the test local accuracy within
2 (or 1) points of the local model. It is the most query accuracy a single shift can buy inside the band on
every cell; a rule can only approach it.

    python scripts/calibration_frontier.py --extra dataset.train_per_class=300 dataset.test_per_class=200 \
        local.epochs=10 --out outputs/frontier_p10
    python scripts/calibration_frontier.py --queries "[0,2,4]" "[2,4,6]" "[0,4,6]" --out outputs/frontier_multi

Prints mean query / local / Δlocal / worst-cell Δlocal per (split, method, rule); writes ``frontier.md``,
``frontier.json`` and ``rows.jsonl`` (cell by cell) under ``--out``. Local models are cached under
``--out/cache`` (copy a query grid's cache there to reuse its local models).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from tqdm.auto import tqdm

from qkt_flower import workflow as wf
from qkt_flower.config import load_config, qkt_spec
from qkt_flower.data.federation import build_federation
from qkt_flower.data.loaders import INFERENCE_BATCH, image_batches
from qkt_flower.errors import ConfigError, DataNotFoundError
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
from qkt_flower.qkt.phases import calibration_split

sys.path.insert(0, str(Path(__file__).resolve().parent))
from query_grid import ACC, add_cell_arguments, cell_overrides  # noqa: E402
from query_grid import summarize as summarize_cells  # noqa: E402

UNCALIBRATED = "strategy.calibration.max_false_query=null"


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
    """What a rule may use (``calibration``: jittered copies, ``own``: the images) and the test view it is scored on."""

    query: tuple[int, ...]
    local_classes: tuple[int, ...]
    budget: float
    calibration: Logits
    own: Logits
    test: Logits


Rule = Callable[[Cell], float]


def false_queries(scale: float = 1.0) -> Rule:
    """Today's rule: at most ``budget`` of the calibration images called a query class."""
    return lambda c: query_bias_shift(query_margins(c.calibration.new, c.query), scale * c.budget)


def no_calibration(c: Cell) -> float:
    return 0.0


def net_false_queries(c: Cell) -> float:
    """Count only the images the local model gets right: the others cost no local accuracy."""
    return query_bias_shift_among(query_margins(c.calibration.new, c.query), c.calibration.local_right(), c.budget)


def spend_gain(on: str) -> Rule:
    """Lower today's shift while the accuracy the new model gained (on ``on`` images) pays for the false queries.

    The false queries are counted on the calibration images, among those the new model gets right otherwise;
    the gain is its accuracy there without query predictions minus the local model's, on the jittered copies
    (``on="calibration"``) or on the client's own images (``on="own"``). Never above today's shift.
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
    """Per cell, the smallest shift that keeps the *test* local accuracy within ``points`` of the local model."""

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


def _logits(model, data, device) -> tuple[torch.Tensor, torch.Tensor]:
    logits, labels = predict_logits(model, image_batches(data, INFERENCE_BATCH, device=device))
    return logits.cpu(), labels.cpu()


def trained_cells(overrides: list[str], device) -> dict[str, Cell]:
    """QKT and the control, trained uncalibrated on one (partition, seed, query) cell."""
    spec = qkt_spec(load_config(overrides).strategy).calibration
    if spec.max_false_query is None:
        raise ValueError("the rules' budget is strategy.calibration.max_false_query: it must not be null here")
    cfg = load_config([*overrides, UNCALIBRATED])
    torch.manual_seed(cfg.seed)
    fed = build_federation(cfg)
    s = fed.scenario
    models = {k: wf.train_client(cfg, fed, k, device) for k in range(fed.num_clients)}
    local = models[s.client].eval()
    teachers = {k: m for k, m in models.items() if k != s.client}
    scores = {k: wf.answer_probe(cfg, m, fed.train.input_shape, device) for k, m in teachers.items()}
    masks, selection = wf.choose_experts(cfg, scores, s.query_classes)
    qkt, _ = wf.learn_query(cfg, fed, local, wf.make_experts(models, masks, selection), device)
    trained = {"QKT": qkt.eval(), "balanced-CE control": wf.control_model(cfg, fed, local, device).eval()}
    _, own = calibration_split(wf.query_task(fed), spec, cfg.seed)
    views = {"calibration": calibration_images(own, s.local_classes, spec, cfg.seed), "own": own,
             "test": fed.test_view()}  # fmt: skip
    before = {view: _logits(local, data, device) for view, data in views.items()}  # the local model's, once

    def logits(model, view: str) -> Logits:
        local_logits, labels = before[view]
        return Logits(_logits(model, views[view], device)[0], local_logits, labels)

    return {name: Cell(s.query_classes, s.local_classes, spec.max_false_query,
                       logits(model, "calibration").only(s.local_classes), logits(model, "own").only(s.local_classes),
                       logits(model, "test"))
            for name, model in trained.items()}  # fmt: skip


def score(cell: Cell, shift: float) -> dict[str, float]:
    """Test query / local accuracy (%) after lowering the query biases by ``shift``, and Δlocal."""
    logits = cell.test.new.clone()
    logits[:, list(cell.query)] -= shift
    after = accuracy_report(logits, cell.test.labels, cell.query, cell.local_classes)
    before = accuracy_report(cell.test.local, cell.test.labels, cell.query, cell.local_classes)
    row = {k: 100 * after[k] for k in ACC}
    row["local_delta"] = row["local_acc"] - 100 * before["local_acc"]
    row["shift"] = None if shift == float("inf") else shift  # None: no single shift keeps the band (oracle)
    return row


def summarize(rows: list[dict]) -> list[dict]:
    """The grid's mean ± std per (partition, method, rule) over cells, with the worst cell's Δlocal."""
    keys = ("partition", "method", "rule")
    table = summarize_cells(rows, keys)
    for agg in table:
        agg["worst_local_delta"] = min(r["local_delta"] for r in rows if all(r[k] == agg[k] for k in keys))
    return table


def markdown(table: list[dict]) -> str:
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


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_cell_arguments(parser)
    parser.add_argument("--out", type=Path, default=Path("outputs/calibration_frontier"))
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    try:
        budget = load_config(args.extra).strategy.calibration.max_false_query
    except ConfigError as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)
    if budget is None:
        print("error: the rules' budget is strategy.calibration.max_false_query: it must not be null here",
              file=sys.stderr)  # fmt: skip
        sys.exit(2)
    device = wf.resolve_device("auto")
    start = time.perf_counter()
    rows: list[dict] = []
    partial = args.out / "rows.jsonl"
    partial.write_text("")
    cells = [(p, s, q) for p in args.partitions for s in args.seeds for q in args.queries]
    for part, seed, query in tqdm(cells, desc="calibration frontier", unit="cell"):
        overrides = cell_overrides(args, part, seed, query)
        try:
            trained = trained_cells(overrides, device)
        except ConfigError as err:  # e.g. a query class nobody else holds under this seed: skip the cell
            print(f"skipped {part} seed {seed} {query}: {err}", file=sys.stderr)
            continue
        except DataNotFoundError as err:
            print(f"error: {err}", file=sys.stderr)
            sys.exit(2)
        new = [{"partition": part, "seed": seed, "query": query, "method": method, "rule": name,
                **score(cell, rule(cell))}
               for method, cell in trained.items() for name, rule in RULES.items()]  # fmt: skip
        with partial.open("a") as f:
            f.writelines(json.dumps(r) + "\n" for r in new)
        rows += new
    minutes = (time.perf_counter() - start) / 60
    table = summarize(rows)
    text = markdown(table) + f"\n{len(rows) // max(1, 2 * len(RULES))} cells, {minutes:.1f} min.\n"
    print(text)
    (args.out / "frontier.md").write_text(text)
    record = {"table": table, "rows": rows, "minutes": minutes, "argv": sys.argv[1:] if argv is None else argv}
    (args.out / "frontier.json").write_text(json.dumps(record, indent=1))
    print(f"written: {args.out}/frontier.md, frontier.json")


if __name__ == "__main__":
    main()
