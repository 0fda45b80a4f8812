"""The calibration frontier's rules and scoring on hand-built logits, its config checks, and the default rule's
agreement with the grid's calibrated rows (slow: trains one tiny cell)."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from qkt_flower.config import load_config
from qkt_flower.errors import ConfigError
from qkt_flower.experiments import frontier
from qkt_flower.experiments.frontier import Cell, Logits
from qkt_flower.qkt.method import MethodSpec

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "calibration_frontier.py"
QUERY, LOCAL = (2,), (0, 1)
T = torch.tensor


def _cell(own_local: list[list[float]] | None = None) -> Cell:
    """Three classes, class 2 queried. Calibration rows (label, query margin): (0, 1.0), (0, 0.2), (1, -1), (0, -2);
    the local model gets the first wrong. Test rows: (0, margin -1), (1, 2), (0, 0.5), (2, query right)."""
    cal_new = T([[0.0, 0, 1], [1, 0, 1.2], [0, 1, 0], [2, 0, 0]])
    cal_local = T([[0.0, 1, 0], [1, 0, 0], [0, 1, 0], [1, 0, 0]])
    calibration = Logits(cal_new, cal_local, T([0, 0, 1, 0]))
    own = Logits(cal_new, T(own_local) if own_local else cal_local, T([0, 0, 1, 0]))
    test_new = T([[2.0, 0, 1], [0, 1, 3], [1, 0, 1.5], [0, 0, 1]])
    test_local = T([[1.0, 0, 0], [0, 1, 0], [0, 1, 0], [1, 0, 0]])  # right, right, wrong, wrong
    return Cell(QUERY, LOCAL, 0.25, calibration, own, Logits(test_new, test_local, T([0, 1, 0, 2])))


def test_score_shifts_the_query_logits_and_compares_with_the_local_model():
    cell = _cell()
    none = frontier.score(cell, 0.0)  # predictions 0, 2, 2, 2: local 1 / 3, query 1 / 1; the local model's local 2 / 3
    assert none["local_acc"] == pytest.approx(100 / 3) and none["query_acc"] == pytest.approx(100.0)
    assert none["local_delta"] == pytest.approx(-100 / 3)
    some = frontier.score(cell, 0.75)  # the 0.5 margin flips back to its label, the query row keeps 1 - 0.75 > 0
    assert (some["local_acc"], some["query_acc"], some["local_delta"]) == pytest.approx((200 / 3, 100.0, 0.0))
    much = frontier.score(cell, 2.5)  # every local row right; the query row loses (0 vs 0: class 0 wins the tie)
    assert (much["local_acc"], much["query_acc"], much["shift"]) == pytest.approx((100.0, 0.0, 2.5))
    assert frontier.score(cell, float("inf"))["shift"] is None


def test_rules_by_hand():
    cell = _cell()
    # budget 0.25 of 4 rows: one false query allowed; the second largest margin (0.2) must end below 0
    assert frontier.RULES["false queries ≤ budget (default)"](cell) == pytest.approx(0.2 + 1e-5 * 1.2)
    assert frontier.RULES["false queries ≤ 2 × budget"](cell) == 0.0  # two allowed: the third margin is -1
    assert frontier.RULES["no calibration"](cell) == 0.0
    # the 1.0 margin is an image the local model gets wrong anyway: not counted, so no shift is needed
    assert frontier.RULES["net false queries ≤ budget (local model right)"](cell) == 0.0
    # gain on the jittered copies: 1 (right otherwise) - 3/4 (local) = 1/4, the same bound as the default
    assert frontier.RULES["spend the gain on jittered copies"](cell) == pytest.approx(0.2 + 1e-5 * 1.2)
    # own images where the local model is right on half: gain 1/2 pays for two false queries
    rich = _cell(own_local=[[0, 1, 0], [0, 1, 0], [0, 1, 0], [1, 0, 0]])
    assert frontier.RULES["spend the gain on own images"](rich) == 0.0
    # test oracle: the local model is right on 2 of 3 local test rows, the new one on all 3 without query calls;
    # a 1-point band then allows one false query: the 0.5 margin must go (the 2.0 one may stay)
    assert frontier.RULES["TEST ORACLE: every cell within 1 point"](cell) == pytest.approx(0.5 + 1e-5 * 1.5)
    assert frontier.score(cell, frontier.RULES["TEST ORACLE: every cell within 1 point"](cell))["local_delta"] == 0.0


def test_cell_rows_and_the_worst_cell():
    one = frontier.cell_rows({"QKT": _cell()}, {"none": frontier.no_calibration})
    rows = [{"partition": "p", "seed": s, "query": "[2]", **r} for s in (0, 1) for r in one]
    rows[1]["local_delta"] = -50.0
    (agg,) = frontier.summarize(rows)
    assert (agg["method"], agg["rule"], agg["cells"]) == ("QKT", "none", 2)
    assert agg["worst_local_delta"] == -50.0 and agg["local_delta"] == pytest.approx((-100 / 3 - 50) / 2)
    assert "| QKT | none | 100.0 ± 0.0 |" in frontier.markdown([agg])


def test_uncalibrated_turns_off_only_the_shift_and_a_null_budget_is_refused():
    method = MethodSpec()
    off = frontier.uncalibrated(method)
    assert off.calibration.max_false_query is None and method.calibration.max_false_query == 0.05
    assert off.calibration.augment == method.calibration.augment and off.phases == method.phases
    with pytest.raises(ConfigError, match="max_false_query"):
        frontier.budget(load_config(["method.calibration.max_false_query=null"]))


def test_the_script_refuses_a_run_without_a_calibration_budget(tmp_path):
    argv = [sys.executable, str(SCRIPT), "--out", str(tmp_path), "--extra", "method.calibration.max_false_query=null"]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=300)
    assert done.returncode == 2 and "max_false_query" in done.stderr and "Traceback" not in done.stderr
    assert done.stderr.startswith("error: ") and len(done.stderr.strip().splitlines()) == 1


@pytest.mark.slow
@pytest.mark.skipif(not Path("/usr/share/datasets/fashion-mnist").is_dir(), reason="needs Fashion-MNIST")
def test_the_default_rule_reproduces_the_grids_calibrated_rows(tmp_path):
    from qkt_flower.experiments.grid import cell_overrides, run_cell
    from qkt_flower.experiments.variants import load_variants, pick

    extra = ["dataset.train_per_class=60", "dataset.test_per_class=40", "local.epochs=1", "strategy.probe.n=32"]
    overrides = cell_overrides("pathological", 0, "[2]", tmp_path / "cache", extra)
    rows = {(r["method"], r["rule"]): r for r in frontier.cell_rows(frontier.trained_cells(overrides))}
    variants = pick(load_variants()[0], ["QKT (default)", "balanced-CE control"])
    grid = {r["method"]: r for r in run_cell(overrides, variants, None)}
    for method, name in (("QKT", "QKT (default)"), ("balanced-CE control", "balanced-CE control")):
        default = rows[(method, "false queries ≤ budget (default)")]
        assert (default["query_acc"], default["local_acc"]) == (grid[name]["query_acc"], grid[name]["local_acc"])
        oracle = rows[(method, "TEST ORACLE: every cell within 2 points")]
        assert oracle["local_delta"] >= -2.0 - 1e-9 or oracle["shift"] is None
        assert oracle["query_acc"] <= rows[(method, "no calibration")]["query_acc"] + 1e-9  # a shift only lowers it
    json.dumps(list(rows.values()))  # the rows are what rows.jsonl stores
