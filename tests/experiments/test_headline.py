"""The headline table: hand-computed values on a tiny grid, the script's files and errors, and no drift."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from qkt_flower.experiments.headline import build, markdown

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "scripts" / "headline.py"


def _row(partition, method, q, local_delta):
    local = 90.0 + local_delta
    accs = {"query_acc": q, "local_acc": local, "local_delta": local_delta, "mean_acc": (q + local) / 2}
    return {"partition": partition, "method": method, "cells": 1, "overall_acc": 0.0, **accs}


def _grid(tmp_path: Path) -> Path:
    """Two tables (pathological, Dirichlet) of a 3-class, 10-epoch grid, with rows the paper metric must skip."""
    table = [
        _row("pathological", "local model", 5.0, 0.0),
        _row("pathological", "QKT (default)", 60.0, -1.0),
        _row("pathological", "QKT, previous default", 70.0, -3.0),  # QKT: never "other"
        _row("pathological", "vanilla KD", 40.0, -1.0),
        _row("pathological", "ensemble (all models)", 20.0, -60.0),
        _row("pathological", "FedAvg (10 rd)", 30.0, -20.0),
        _row("pathological", "FedAvg (10 rd) + FT", 55.0, 1.0),  # in band, excluded from the paper metric
        _row("pathological", "balanced-CE control", 65.0, -2.5),  # out of band, excluded from the paper metric
        _row("dirichlet", "local model", 10.0, 0.0),
        _row("dirichlet", "QKT (default)", 50.0, 0.5),
        _row("dirichlet", "FedDF fusion", 20.0, -5.0),
        _row("dirichlet", "FedProx (1 rd)", 35.0, -10.0),
        _row("dirichlet", "FedProx (10 rd) + FT", 58.0, 1.0),
        _row("dirichlet", "balanced-CE control", 52.0, -2.0),  # exactly at the band's edge: in
    ]
    rows = [{"partition": p, "seed": 0, "query": "[0,2,4]", "method": "x"} for p in ("pathological", "dirichlet")]
    path = tmp_path / "grid.json"
    path.write_text(json.dumps({"mine": {"table": table, "rows": rows, "argv": ["--extra", "local.epochs=10"]}}))
    return path


def test_hand_computed_values(tmp_path):
    path = _grid(tmp_path)
    path_str = path.as_posix()
    path_table, dir_table = build([path])
    assert path_table == {
        "table": "FMNIST P10 3-class pathological",
        "qkt_query": 60.0,
        "local_delta": -1.0,
        "best_other": "FedAvg (10 rd) + FT",  # control out of band, QKT variants and local model never count
        "best_other_query": 55.0,
        "margin": 5.0,
        "paper_metric_gain": 30.0,  # 60 - mean(40, 20, 30)
        "best_mean_method": "balanced-CE control",  # (65 + 87.5) / 2 = 76.25; QKT's own variants (78.5) are no rivals
        "source": path_str,
    }
    assert dir_table["table"] == "FMNIST P10 3-class dirichlet"
    assert dir_table["paper_metric_gain"] == 22.5  # 50 - mean(20, 35)
    assert (dir_table["best_other"], dir_table["best_other_query"]) == ("FedProx (10 rd) + FT", 58.0)
    assert dir_table["margin"] == -8.0
    assert dir_table["best_mean_method"] == "FedProx (10 rd) + FT"  # (58 + 91) / 2 = 74.5
    text = markdown([path_table, dir_table])
    assert "| FMNIST P10 3-class pathological | 60.0 (−1.0) | +30.0 | FedAvg (10 rd) + FT (55.0) | +5.0 |" in text
    assert "multi-class +26.2 over 2 tables" in text  # mean(30.0, 22.5) = 26.25


def test_single_grid_file_and_default_epochs(tmp_path):
    grid = json.loads(_grid(tmp_path).read_text())["mine"]
    grid["argv"] = []
    grid["rows"] = [{**r, "query": "[4]"} for r in grid["rows"]]
    path = tmp_path / "single.json"
    path.write_text(json.dumps(grid))
    assert [t["table"] for t in build([path])] == ["FMNIST P2 1-class pathological", "FMNIST P2 1-class dirichlet"]
    grid["label"] = "CIFAR-10 subset P20"  # a grid that names itself: its epochs come from its dataset preset
    path.write_text(json.dumps(grid))
    assert build([path])[0]["table"] == "CIFAR-10 subset P20 1-class pathological"


def _run(*args, cwd):
    return subprocess.run([sys.executable, str(SCRIPT), *args], cwd=cwd, capture_output=True, text=True)


def test_script_writes_both_files(tmp_path):
    out = tmp_path / "out"
    proc = _run("--grid", str(_grid(tmp_path)), "--out", str(out), cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    tables = json.loads((out / "headline.json").read_text())
    assert [t["paper_metric_gain"] for t in tables] == [30.0, 22.5]
    assert (out / "headline.md").read_text().strip() in proc.stdout


@pytest.mark.parametrize("content", [None, "{not json", '{"a": 1}', '{"g": {"table": [{"method": "QKT (default)"}]}}'])
def test_bad_grid_file_exits_2_with_one_line(tmp_path, content):
    path = tmp_path / "bad.json"
    if content is not None:
        path.write_text(content)
    proc = _run("--grid", str(path), "--out", str(tmp_path / "out"), cwd=tmp_path)
    assert proc.returncode == 2
    assert proc.stderr.startswith("error: ") and proc.stderr.count("\n") == 1, proc.stderr
    assert "Traceback" not in proc.stderr
    assert not (tmp_path / "out").exists()


def test_committed_headline_matches_committed_grids(monkeypatch):
    monkeypatch.chdir(ROOT)  # the sources are stored relative to the repository root
    committed = json.loads((ROOT / "results" / "headline.json").read_text())
    sources = list(dict.fromkeys(t["source"] for t in committed))
    assert committed == build(sources)
    assert (ROOT / "results" / "headline.md").read_text() == markdown(committed) + "\n"


@pytest.mark.parametrize("doc", ["README.md", "docs/RESULTS.md"])
def test_the_docs_embed_the_committed_headline_verbatim(doc):
    """The table a reader sees is the generated one: it can never drift from the data."""
    text = (ROOT / doc).read_text()
    start, end = "<!-- headline:start -->\n", "\n<!-- headline:end -->"
    assert start in text and end in text
    embedded = text.split(start, 1)[1].split(end, 1)[0]
    assert embedded.strip() == (ROOT / "results" / "headline.md").read_text().strip()
