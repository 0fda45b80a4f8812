"""Many runs' results.json as one table: seeds grouped, means by hand, what a runtime does not record left empty."""

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

from qkt_flower.experiments.runs import markdown, summarize_runs

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "summarize.py"


def _acc(q: float, loc: float) -> dict:
    return {"query_acc": q, "local_acc": loc, "overall_acc": (q + loc) / 2, "mean_acc": (q + loc) / 2}


def _reference(seed: int, q: float, control: bool = True) -> dict:
    run = {"runtime": "reference", "method": "qkt", "seed": seed, "dataset": "fashion-mnist", "partition": "dirichlet",
           "shots": 5, "query_classes": [4], "before": _acc(0.0, 0.9), "after": _acc(q, 0.8),
           "probe": {"quality": {"precision": 0.5 + seed / 10, "recall": 1.0},
                     "quality_query": {"precision": 1.0, "recall": 1.0}},
           "seconds": {"local_training": 10.0, "query_joint": 2.0}}  # fmt: skip
    if control:
        run["control"] = _acc(0.2, 0.9)
    return run


def test_seeds_are_grouped_and_averaged_in_percent():
    flower = {"runtime": "flower", "method": "qkt", "seed": 0, "query_classes": [4], "before": _acc(0.0, 0.9),
              "after": _acc(0.5, 0.9), "seconds": {"train": 30.0, "qkt": 5.0, "total": 40.0}}  # fmt: skip
    rows = summarize_runs([_reference(0, 0.4), _reference(1, 0.6, control=False), flower])
    ref = next(r for r in rows if r["dataset"] == "fashion-mnist")
    assert (ref["runs"], ref["seeds"], ref["num_query"], ref["shots"]) == (2, [0, 1], 1, 5)
    assert ref["after_query_acc"] == pytest.approx(50.0) and ref["after_query_acc_std"] == pytest.approx(math.sqrt(200))
    assert ref["control_query_acc"] == pytest.approx(20.0) and ref["control_query_acc_std"] == 0.0  # one run has it
    assert ref["mask_precision"] == pytest.approx(0.55) and ref["seconds"] == pytest.approx(12.0)
    fl = next(r for r in rows if r["dataset"] is None)  # Flower's results name neither dataset nor split
    assert fl["seconds"] == 40.0 and math.isnan(fl["mask_precision"]) and math.isnan(fl["control_query_acc"])
    assert markdown(rows).count("\n") == 3


def test_the_script_tables_a_folder_and_refuses_a_foreign_json(tmp_path):
    for seed, q in ((0, 0.4), (1, 0.6)):
        (tmp_path / "runs" / str(seed)).mkdir(parents=True)
        (tmp_path / "runs" / str(seed) / "results.json").write_text(json.dumps(_reference(seed, q)))
    done = subprocess.run([sys.executable, str(SCRIPT), str(tmp_path / "runs"), "--out", str(tmp_path / "s")],
                          capture_output=True, text=True, timeout=120)  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert json.loads((tmp_path / "s.json").read_text())[0]["after_query_acc"] == pytest.approx(50.0)
    (tmp_path / "runs" / "2").mkdir()
    (tmp_path / "runs" / "2" / "results.json").write_text('{"table": []}')
    done = subprocess.run([sys.executable, str(SCRIPT), str(tmp_path / "runs")], capture_output=True, text=True,
                          timeout=120)  # fmt: skip
    assert done.returncode == 2 and "Traceback" not in done.stderr and "results.json" in done.stderr
    assert done.stderr.startswith("error: ") and len(done.stderr.strip().splitlines()) == 1
