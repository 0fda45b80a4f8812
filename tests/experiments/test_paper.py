"""The paper table's rows from one Flower run's results.json, its ablation list, and the tables (hand-computed)."""

import math
import subprocess
import sys
from pathlib import Path

import pytest

from qkt_flower.experiments import paper
from qkt_flower.experiments.variants import load_variants

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "paper_table.py"


def _acc(q: float, loc: float) -> dict:
    return {"query_acc": q, "local_acc": loc, "overall_acc": (q + loc) / 2, "mean_acc": (q + loc) / 2}


def _flower_results() -> dict:
    """A Flower run's results.json as the ServerApp writes it: raw bookkeeping plus the top-level evaluations."""
    from qkt_flower.fl.server_app import evaluations

    metrics = {f"{stage}.{k}": v for stage, acc in (("before", _acc(0.0, 0.9)), ("after", _acc(0.6, 0.88)),
                                                    ("control", _acc(0.3, 0.9))) for k, v in acc.items()}  # fmt: skip
    raw = {
        "metrics": metrics,
        "bytes": {"sent": {"train": 10**6, "probe": 10, "weights": 20, "qkt": 1000, "baselines": 500},
                  "received": {"train": 10**6, "probe": 40, "weights": 3000, "qkt": 5, "baselines.weights": 9000}},
        "seconds": {"train": 50.0, "probe": 1.0, "weights": 2.0, "qkt": 10.0, "total": 70.0},
        "baselines": {
            "one_round": {"ensemble": {**_acc(0.2, 0.5), "seconds": 1.5, "teachers": 4},
                          "feddf": {**_acc(0.1, 0.7), "seconds": 4.0, "teachers": 4}},
            "fedavg": {"rounds": {"1": {"global": _acc(0.05, 0.3), "finetuned": _acc(0.4, 0.8), "bytes": 800},
                                  "2": {"global": _acc(0.1, 0.4), "finetuned": _acc(0.5, 0.85), "bytes": 1600}},
                       "seconds": 30.0},
        },
    }  # fmt: skip
    return {**raw, **evaluations(raw)}


def test_method_rows_read_the_top_level_evaluations_and_the_byte_bookkeeping():
    rows = {r["method"]: r for r in paper.method_rows(_flower_results())}
    assert list(rows) == ["local model", "balanced-CE control", "QKT", "ensemble (all models)", "FedDF fusion",
                          "FedAvg (1 rd)", "FedAvg (1 rd) + FT", "FedAvg (2 rd)", "FedAvg (2 rd) + FT"]  # fmt: skip
    assert rows["QKT"]["query_acc"] == pytest.approx(60.0) and rows["QKT"]["local_acc"] == pytest.approx(88.0)
    assert rows["QKT"]["bytes"] == 10 + 20 + 1000 + 40 + 3000 + 5  # probe, weights, qkt; both ways; not training
    assert rows["QKT"]["seconds"] == pytest.approx(13.0)
    assert rows["FedDF fusion"]["bytes"] == 9000 + 500 and rows["FedDF fusion"]["seconds"] == 4.0
    assert rows["FedAvg (1 rd) + FT"]["query_acc"] == pytest.approx(40.0)
    assert (rows["FedAvg (1 rd)"]["seconds"], rows["FedAvg (2 rd)"]["seconds"]) == (15.0, 30.0)  # pro rata
    assert (rows["FedAvg (2 rd)"]["bytes"], rows["FedAvg (2 rd)"]["rounds"]) == (1600, 2)


def test_aggregate_and_markdown_by_hand():
    rows = [{"method": "QKT", "seed": s, **{k: v for k, v in _acc(q, 80.0).items()}, "bytes": b, "seconds": 1.0}
            for s, q, b in ((0, 50.0, 100), (1, 60.0, 300))]  # fmt: skip
    rows.append({"method": "local model", "seed": 0, **_acc(0.0, 90.0), "bytes": 0, "seconds": 0.0})
    table = paper.aggregate(rows, ("method",))
    qkt = table[0]
    assert (qkt["runs"], qkt["query_acc"], qkt["bytes"]) == (2, 55.0, 200.0)
    assert qkt["query_acc_std"] == pytest.approx(math.sqrt(50.0))
    text = paper.markdown(table, "t")
    assert "| QKT | 55.0 ± 7.1 | 80.0 ± 0.0 |" in text
    assert "| local model | 0.0 ± 0.0 | 90.0 ± 0.0 | 45.0 | 45.0 | +0.0 | +55.0 |" in text


def test_ablations_are_the_variants_list_minus_the_quick_skips():
    variants, lists = load_variants()
    skipped = paper.PRESETS["quick"]["skip_ablations"]
    assert set(skipped) <= set(lists["ablations"])  # a renamed variant would silently stop being skipped
    quick, full = paper.ablations("quick"), paper.ablations("full")
    assert list(full) == lists["ablations"] and list(quick) == [n for n in lists["ablations"] if n not in skipped]
    assert quick["QKT, no L_keep"] == variants["QKT, no L_keep"]
    slugs = [paper.slug(n) for n in variants]
    assert len(set(slugs)) == len(slugs) and all(s.isascii() and " " not in s for s in slugs)
    assert paper.slug("QKT, λ = 4") == "QKT_lambda_4" and paper.slug("QKT (default)") == "QKT_default"


def test_ablation_row_and_overrides():
    res = {"after": _acc(0.5, 0.9), "bytes": {"expert_weights": 1234}, "probe": {"quality": None},
           "seconds": {"local_training": 9.0, "query_joint": 2.0, "query_teacher_logits": 0.5}}  # fmt: skip
    row = paper.ablation_row(res, "fashion_mnist", 1, "QKT, no mask")
    assert (row["bytes"], row["seconds"], row["mask_precision"]) == (1234, 2.5, None)
    assert row["query_acc"] == pytest.approx(50.0)
    base = paper.run_overrides("cifar10", "multi", 2, Path("/c"), "quick", ["baselines.rounds=3"])
    assert base[:4] == ["dataset=cifar10", "model=resnet10", "query=multi", "seed=2"]
    assert base[-1] == "baselines.rounds=3" and "baselines.rounds=5" in base  # the extra override comes last: it wins


def test_the_script_refuses_a_bad_override_in_one_line(tmp_path):
    done = subprocess.run([sys.executable, str(SCRIPT), "--seeds", "0", "--out", str(tmp_path), "--extra", "nope=1"],
                          capture_output=True, text=True, timeout=300)  # fmt: skip
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert done.stderr.startswith("error: ") and len(done.stderr.strip().splitlines()) == 1
