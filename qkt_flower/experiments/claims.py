"""The claim check across several query grids: one column per (grid label, query size, split).

One grid answers the claim for one protocol; whether it holds is only convincing when it holds in every column at
once, so this lays the grids side by side: every method's query accuracy (Δlocal) per column, then the three
conditions of :func:`qkt_flower.experiments.tables.claim_conditions` for the QKT row per column.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from qkt_flower.experiments.tables import best_in_band, claim_conditions, margin_for

SPLITS = {"pathological": "path.", "dirichlet": "Dir.", "iid": "IID"}
CONDITIONS = ("best mean(q,l)", "local within 2", "query margin")
Column = tuple[list[dict], float]  # (that column's summary rows, its query margin)


def columns(grids: list[tuple[str, Path]]) -> dict[str, Column]:
    """``{column name: (summary rows, query margin)}`` from ``(label, query_grid.py --out folder)`` pairs, in order.

    A column is one split of one grid, named "<label> <largest query size>-cl <split>"; the margin is the paper's
    for that grid's queries (:func:`~qkt_flower.experiments.tables.margin_for`). A folder without ``grid.json``
    is a ``FileNotFoundError``, one that is not a query grid a ``ValueError``.
    """
    out: dict[str, Column] = {}
    for label, folder in grids:
        path = Path(folder) / "grid.json"
        if not path.is_file():
            raise FileNotFoundError(f"{path} not found (run scripts/query_grid.py --out {folder} first)")
        try:
            grid = json.loads(path.read_text())
            for split in dict.fromkeys(r["partition"] for r in grid["table"]):
                queries = {r["query"] for r in grid["rows"] if r["partition"] == split}
                size = max(len(json.loads(q)) for q in queries)
                name = f"{label} {size}-cl {SPLITS.get(split, split)}"
                out[name] = ([r for r in grid["table"] if r["partition"] == split], margin_for(queries))
        except (KeyError, TypeError, ValueError) as err:
            raise ValueError(f"{path}: not a query grid ({type(err).__name__}: {err})") from None
    return out


def typographic(text: str) -> str:
    """Minus signs before numbers as typographic minus (−), as in the README."""
    return re.sub(r"(?<![\w-])-(?=\d)", "−", text)


def claim_table(cols: dict[str, Column], qkt: str) -> tuple[str, dict]:
    """Markdown and its JSON: every method's "query (Δlocal)" per column, then the conditions for ``qkt``.

    ``passed`` holds, per column, the three conditions' outcomes (``None`` where the column has no ``qkt`` row).
    Minus signs are typographic (−) in the Markdown, as in the README.
    """
    methods = list(dict.fromkeys(r["method"] for rows, _ in cols.values() for r in rows))
    lines = ["| query (Δlocal) | " + " | ".join(cols) + " |", "|---" * (len(cols) + 1) + "|"]
    for m in methods:
        cells = []
        for rows, _ in cols.values():
            r = next((r for r in rows if r["method"] == m), None)
            cells.append("" if r is None else f"{r['query_acc']:.1f} ({r['local_delta']:+.1f})")
        lines.append(f"| {m} | " + " | ".join(cells) + " |")
    checks = {name: claim_conditions(rows, margin, qkt) for name, (rows, margin) in cols.items()}
    for i, condition in enumerate(CONDITIONS):
        cells = ["—" if c is None else f"{'PASS' if c[i][0] else 'FAIL'}: {c[i][2]}" for c in checks.values()]
        lines.append(f"| **{condition}** | " + " | ".join(cells) + " |")
    passed = {name: None if c is None else [ok for ok, _, _ in c] for name, c in checks.items()}
    data = {"columns": {name: {"margin": margin, "rows": rows} for name, (rows, margin) in cols.items()},
            "passed": passed}  # fmt: skip
    return typographic("\n".join(lines)), data


def margin_table(cols: dict[str, Column], names: list[str]) -> tuple[str, dict]:
    """Per method and column: query margin over the best in-band competitor, and Δlocal.

    A cell reads "margin (Δlocal)" and carries ✓ when all three conditions hold there (margin ≥ the column's
    goal, Δlocal ≥ −2, best mean(q,l) of all competitors). The first line names each column's best in-band
    competitor and the goal. Empty where a column has no such row.
    """
    lines = ["| margin over best in-band (Δlocal) | " + " | ".join(cols) + " |", "|---" * (len(cols) + 1) + "|"]
    best = {name: best_in_band(rows) for name, (rows, _) in cols.items()}
    lines.append("| *best in-band competitor (goal)* | " + " | ".join(
        f"{b['method']} {b['query_acc']:.1f} (+{cols[n][1]:g})" for n, b in best.items()) + " |")  # fmt: skip
    data: dict[str, dict] = {}
    for m in names:
        cells, data[m] = [], {}
        for col, (rows, goal) in cols.items():
            r = next((r for r in rows if r["method"] == m), None)
            if r is None:
                cells.append("")
                continue
            gap = r["query_acc"] - best[col]["query_acc"]
            ok = all(passed for passed, _, _ in claim_conditions(rows, goal, m))
            data[m][col] = {"margin": gap, "local_delta": r["local_delta"], "all_three": ok}
            cells.append(f"{gap:+.1f} ({r['local_delta']:+.1f}){' ✓' if ok else ''}")
        lines.append(f"| {m} | " + " | ".join(cells) + " |")
    return typographic("\n".join(lines)), data
