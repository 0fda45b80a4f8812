"""The data-size table: merged grid folders, complete cells only, and the plan's selection rule."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from qkt_flower.experiments import data_size

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "data_size_table.py"
A, B = "QKT (default)", "QKT, epochs over the transfer set (previous default)"
C = "QKT, paper recipe (two phases, no augmentation, no consistent KD)"


def _rows(folder: Path, accs: dict[str, tuple[float, float]], seeds=(0, 1)) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    lines = []
    for seed in seeds:
        for method, (q, loc) in {"local model": (0.0, 90.0), **accs}.items():
            row = {
                "partition": "pathological",
                "seed": seed,
                "query": "[0]",
                "method": method,
                "query_acc": q,
                "local_acc": loc,
                "overall_acc": (q + loc) / 2,
                "mean_acc": (q + loc) / 2,
                "local_delta": loc - 90.0,
            }
            lines.append(json.dumps(row))
    (folder / "rows.jsonl").write_text("\n".join(lines) + "\n")


def _table(*grids: str, candidates=(A, B, C)) -> dict:
    rows, sizes = [], []
    for spec in grids:
        size, folders = data_size.parse_grid(spec)
        sizes.append(size)
        rows += data_size.load_rows(size, folders)
    return data_size.size_table(rows, sizes, list(candidates), A, 0.5)


def test_best_eligible_mean_wins_and_a_local_loss_disqualifies(tmp_path):
    _rows(tmp_path / "small", {A: (60.0, 90.0), B: (62.0, 90.0), C: (80.0, 85.0)})
    _rows(tmp_path / "big", {A: (30.0, 96.0)})
    _rows(tmp_path / "big_new", {B: (45.0, 95.0), C: (40.0, 96.0)})
    got = _table(f"300={tmp_path / 'small'}", f"6000={tmp_path / 'big'},{tmp_path / 'big_new'}")
    assert got["winner"] == B  # C has the best small-size mean but loses 5 local points there
    assert got["tables"][B]["mean"] == pytest.approx(((62 + 90) / 2 + (45 + 95) / 2) / 2)
    assert set(got["tables"][A]["cells"]) == {"300/pathological", "6000/pathological"}


def test_a_lead_within_the_tie_keeps_the_incumbent_and_missing_cells_are_refused(tmp_path):
    _rows(tmp_path / "g", {A: (60.0, 90.0), B: (60.6, 90.0), C: (10.0, 90.0)})
    assert _table(f"300={tmp_path / 'g'}")["winner"] == A
    _rows(tmp_path / "h", {A: (60.0, 90.0)}, seeds=(0, 1))
    _rows(tmp_path / "h2", {B: (70.0, 90.0)}, seeds=(0,))
    with pytest.raises(ValueError, match="not run on every cell"):
        _table(f"300={tmp_path / 'h'},{tmp_path / 'h2'}")
    _rows(tmp_path / "h3", {"balanced-CE control": (50.0, 90.0)}, seeds=(0,))  # not a candidate: left out, said so
    _rows(tmp_path / "h4", {A: (60.0, 90.0), B: (70.0, 90.0), C: (10.0, 90.0)})
    got = _table(f"300={tmp_path / 'h4'},{tmp_path / 'h3'}")
    assert got["winner"] == B and "balanced-CE control" not in got["tables"]
    assert "Left out (not run on every cell): balanced-CE control" in data_size.markdown(got)


def _script(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(SCRIPT), *args], capture_output=True, text=True, timeout=120)


def test_the_script_writes_the_table_and_refuses_bad_input_in_one_line(tmp_path):
    _rows(tmp_path / "g", {A: (60.0, 90.0), B: (60.6, 90.0), C: (10.0, 90.0)})
    done = _script("--grid", f"300={tmp_path / 'g'}", "--out", str(tmp_path / "out"))
    assert done.returncode == 0, done.stderr
    assert json.loads((tmp_path / "out" / "table.json").read_text())["winner"] == A
    assert "Selection rule: QKT (default)" in (tmp_path / "out" / "table.md").read_text()
    _rows(tmp_path / "h", {A: (60.0, 90.0)}, seeds=(0, 1))
    _rows(tmp_path / "h2", {B: (70.0, 90.0)}, seeds=(0,))
    for bad in (["--grid", "300"], ["--grid", f"300={tmp_path / 'nowhere'}"],
                ["--grid", f"300={tmp_path / 'h'},{tmp_path / 'h2'}"]):  # fmt: skip
        done = _script(*bad, "--out", str(tmp_path / "bad"))
        assert done.returncode == 2 and "Traceback" not in done.stderr, done.stderr
        assert done.stderr.startswith("error: ") and len(done.stderr.strip().splitlines()) == 1
    assert "not run on every cell" in done.stderr
