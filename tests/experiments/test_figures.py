"""Figures: the λ of each mask variant comes from conf/variants.yaml; a figure is drawn only from data it has."""

import json
import subprocess
import sys
from pathlib import Path

from qkt_flower.experiments import figures
from qkt_flower.experiments.variants import load_variants

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "plot.py"


def test_mask_lambdas_are_read_from_the_variants():
    lambdas = figures.mask_lambdas(load_variants()[0], 1.0)
    assert lambdas == {"QKT (default)": 1.0, "QKT, λ = 0.5": 0.5, "QKT, stricter mask (λ = 2)": 2.0, "QKT, λ = 4": 4.0}


def test_trade_off_is_drawn_from_a_grid_and_missing_data_draws_nothing(tmp_path):
    table = [{"partition": p, "method": m, "query_acc": q, "local_delta": d}
             for p in ("pathological", "dirichlet")
             for m, q, d in (("QKT (default)", 60.0, -1.0), ("QKT, no calibration", 70.0, -4.0),
                             ("balanced-CE control", 40.0, 0.5), ("vanilla KD", 30.0, -3.0))]  # fmt: skip
    path = figures.trade_off({"table": table}, tmp_path)
    assert path == tmp_path / "trade_off.png" and path.read_bytes()[:4] == b"\x89PNG"
    assert figures.trade_off({"table": []}, tmp_path) is None
    summary = {"ablations": [{"method": "QKT (default)"}], "ablation_rows": [], "table": []}
    assert figures.lambda_sweep(summary, tmp_path, {"QKT (default)": 1.0}) is None  # one λ is no sweep
    assert figures.accuracy_vs_bytes(summary, tmp_path) is None and figures.per_class(tmp_path, tmp_path) is None


def test_the_script_refuses_a_folder_without_tables_in_one_line(tmp_path):
    for folder in (tmp_path, tmp_path / "nowhere"):
        done = subprocess.run([sys.executable, str(SCRIPT), str(folder)], capture_output=True, text=True, timeout=120)
        assert done.returncode == 2 and "Traceback" not in done.stderr
        assert done.stderr.startswith("error: ") and len(done.stderr.strip().splitlines()) == 1
    (tmp_path / "grid.json").write_text(json.dumps({"rows": []}))
    done = subprocess.run([sys.executable, str(SCRIPT), str(tmp_path)], capture_output=True, text=True, timeout=120)
    assert done.returncode == 2 and "no 'table' entry" in done.stderr
