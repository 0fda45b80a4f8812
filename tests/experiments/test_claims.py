"""The claim table across grids: one column per (label, query size, split), the conditions per column, and errors."""

import json
import subprocess
import sys
from pathlib import Path

from qkt_flower.experiments.claims import claim_table, columns, margin_table

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "claim_table.py"


def _row(partition: str, method: str, q: float, delta: float) -> dict:
    local = 90.0 + delta
    return {"partition": partition, "method": method, "query_acc": q, "local_acc": local, "local_delta": delta,
            "overall_acc": 0.0, "mean_acc": (q + local) / 2}  # fmt: skip


def _grid(folder: Path, qkt_delta: float, queries: tuple[str, ...]) -> Path:
    """Pathological only: QKT 60 query; the best other keeping local (vanilla KD) 35, so the margin is 25."""
    rows = (
        ("local model", 0.0, 0.0),
        ("QKT (default)", 60.0, qkt_delta),
        ("vanilla KD", 35.0, -1.0),
        ("FedAvg (1 rd)", 70.0, -40.0),
    )
    table = [_row("pathological", *r) for r in rows]
    rows = [{"partition": "pathological", "seed": 0, "query": q, "method": "QKT (default)"} for q in queries]
    folder.mkdir(parents=True)
    (folder / "grid.json").write_text(json.dumps({"table": table, "rows": rows}))
    return folder


def test_one_column_per_grid_split_with_the_papers_margin(tmp_path):
    single = _grid(tmp_path / "single", -1.0, ("[0]", "[2]"))
    multi = _grid(tmp_path / "multi", -3.0, ("[0,2,4]",))
    cols = columns([("P2", single), ("P2", multi)])
    assert list(cols) == ["P2 1-cl path.", "P2 3-cl path."]
    assert [margin for _, margin in cols.values()] == [20.0, 14.0]
    text, data = claim_table(cols, "QKT (default)")
    # single: best mean (59.5 vs vanilla KD's 62 / 2 ...), local -1 within 2, margin 25 ≥ 20
    assert data["passed"]["P2 1-cl path."] == [True, True, True]
    assert data["passed"]["P2 3-cl path."] == [True, False, True]  # local −3: out of the band
    assert "| QKT (default) | 60.0 (−1.0) | 60.0 (−3.0) |" in text
    assert text.count("PASS") == 5 and text.count("FAIL") == 1
    assert claim_table(cols, "QKT Light")[1]["passed"] == {"P2 1-cl path.": None, "P2 3-cl path.": None}
    text, margins = margin_table(cols, ["QKT (default)", "QKT Light"])
    assert margins["QKT (default)"]["P2 1-cl path."] == {"margin": 25.0, "local_delta": -1.0, "all_three": True}
    assert margins["QKT (default)"]["P2 3-cl path."]["all_three"] is False  # margin 25 but local −3
    assert margins["QKT Light"] == {} and "| QKT Light |  |  |" in text
    assert "| *best in-band competitor (goal)* | vanilla KD 35.0 (+20) | vanilla KD 35.0 (+14) |" in text
    assert "| QKT (default) | +25.0 (−1.0) ✓ | +25.0 (−3.0) |" in text


def test_the_script_refuses_bad_input_in_one_line(tmp_path):
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "grid.json").write_text('{"rows": []}')
    for args in (["nolabel"], [f"A={tmp_path / 'nowhere'}"], [f"A={tmp_path / 'broken'}"]):
        done = subprocess.run([sys.executable, str(SCRIPT), *args, "--out", str(tmp_path / "out")],
                              capture_output=True, text=True, timeout=120)  # fmt: skip
        assert done.returncode == 2 and "Traceback" not in done.stderr, done.stderr
        assert done.stderr.startswith("error: ") and len(done.stderr.strip().splitlines()) == 1
    assert "not a query grid" in done.stderr
