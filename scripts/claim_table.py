"""The issue's claim check across several query grids, one column per (protocol, query size, split).

    python scripts/claim_table.py P2=outputs/claim_p2 P2=outputs/claim_p2_multi \
        P10=outputs/claim_p10 P10=outputs/claim_p10_multi --out outputs/claim

Each ``LABEL=FOLDER`` is a ``scripts/query_grid.py --out`` folder (its ``grid.json``); the label names what
differs between grids (here the local models' epochs). Rows: every method, as "query (Δlocal)"; then the three
conditions for ``--qkt`` per column (best mean(q,l) of all, local within 2 points, query margin ≥ 20 / 14 over
the best non-QKT method that keeps local). Prints Markdown and writes ``claim.md`` / ``claim.json``.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from query_grid import claim_conditions, margin_for  # noqa: E402

SPLITS = {"pathological": "path.", "dirichlet": "Dir.", "iid": "IID"}
CONDITIONS = ("best mean(q,l)", "local within 2", "query margin")


def columns(grids: list[tuple[str, Path]]) -> dict[str, tuple[list[dict], float]]:
    """``{column name: (that column's summary rows, its query margin)}`` in the order the grids were given."""
    out: dict[str, tuple[list[dict], float]] = {}
    for label, folder in grids:
        path = folder / "grid.json"
        if not path.is_file():
            raise FileNotFoundError(f"{path} not found (run scripts/query_grid.py --out {folder} first)")
        grid = json.loads(path.read_text())
        for split in dict.fromkeys(r["partition"] for r in grid["table"]):
            queries = {r["query"] for r in grid["rows"] if r["partition"] == split}
            size = max(len(json.loads(q)) for q in queries)
            name = f"{label} {size}-cl {SPLITS.get(split, split)}"
            out[name] = ([r for r in grid["table"] if r["partition"] == split], margin_for(queries))
    return out


def claim_table(cols: dict[str, tuple[list[dict], float]], qkt: str) -> tuple[str, dict]:
    """Markdown table and its JSON: every method's query (Δlocal) per column, then the conditions for ``qkt``."""
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
    return re.sub(r"(?<![\w-])-(?=\d)", "−", "\n".join(lines)), data


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("grids", nargs="+", metavar="LABEL=FOLDER", help="query_grid.py --out folders")
    parser.add_argument("--qkt", default="QKT (default)", help="the QKT row the conditions are checked for")
    parser.add_argument("--out", type=Path, default=Path("outputs/claim"))
    args = parser.parse_args(argv)
    grids = []
    for item in args.grids:
        label, sep, folder = item.partition("=")
        if not sep or not label or not folder:
            print(f"error: {item!r} is not LABEL=FOLDER", file=sys.stderr)
            sys.exit(2)
        grids.append((label, Path(folder)))
    try:
        text, data = claim_table(columns(grids), args.qkt)
    except FileNotFoundError as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)
    print(text)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "claim.md").write_text(text + "\n")
    (args.out / "claim.json").write_text(json.dumps(data, indent=1))
    print(f"written: {args.out}/claim.md, claim.json")


if __name__ == "__main__":
    main()
