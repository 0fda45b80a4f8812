"""The data-size table: merged grid folders, complete cells only, and the plan's selection rule."""

import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "scripts"))
import data_size_table  # noqa: E402

A, B = "QKT (default)", "QKT, 320 samples per epoch"
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


def _run(tmp_path, *grids, extra=()):
    out = tmp_path / "out"
    data_size_table.main(["--grid", *grids, "--out", str(out), *extra])
    return json.loads((out / "table.json").read_text())


def test_best_eligible_mean_wins_and_a_local_loss_disqualifies(tmp_path):
    _rows(tmp_path / "small", {A: (60.0, 90.0), B: (62.0, 90.0), C: (80.0, 85.0)})
    _rows(tmp_path / "big", {A: (30.0, 96.0)})
    _rows(tmp_path / "big_new", {B: (45.0, 95.0), C: (40.0, 96.0)})
    got = _run(tmp_path, f"300={tmp_path / 'small'}", f"6000={tmp_path / 'big'},{tmp_path / 'big_new'}")
    assert got["winner"] == B  # C has the best small-size mean but loses 5 local points there
    assert got["tables"][B]["mean"] == pytest.approx(((62 + 90) / 2 + (45 + 95) / 2) / 2)
    assert set(got["tables"][A]["cells"]) == {"300/pathological", "6000/pathological"}


def test_a_lead_within_the_tie_keeps_the_incumbent_and_missing_cells_are_refused(tmp_path):
    _rows(tmp_path / "g", {A: (60.0, 90.0), B: (60.6, 90.0), C: (10.0, 90.0)})
    assert _run(tmp_path, f"300={tmp_path / 'g'}")["winner"] == A
    _rows(tmp_path / "h", {A: (60.0, 90.0)}, seeds=(0, 1))
    _rows(tmp_path / "h2", {B: (70.0, 90.0)}, seeds=(0,))
    with pytest.raises(SystemExit, match="not run on every cell"):
        _run(tmp_path, f"300={tmp_path / 'h'},{tmp_path / 'h2'}")
    _rows(tmp_path / "h3", {"balanced-CE control": (50.0, 90.0)}, seeds=(0,))  # not a candidate: left out, said so
    _rows(tmp_path / "h4", {A: (60.0, 90.0), B: (70.0, 90.0), C: (10.0, 90.0)})
    got = _run(tmp_path, f"300={tmp_path / 'h4'},{tmp_path / 'h3'}")
    assert got["winner"] == B and "balanced-CE control" not in got["tables"]
    assert "Left out (not run on every cell): balanced-CE control" in (tmp_path / "out" / "table.md").read_text()
