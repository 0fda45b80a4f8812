"""The claim check (best mean(q,l), local band, query margin) across query grids: a column per (protocol, size, split).

    python scripts/claim_table.py P2=outputs/claim_p2 P2=outputs/claim_p2_multi \
        P10=outputs/claim_p10 P10=outputs/claim_p10_multi --out outputs/claim

Each ``LABEL=FOLDER`` is a ``scripts/query_grid.py --out`` folder (its ``grid.json``); the label names what
differs between grids (here the local models' epochs). Rows: every method, as "query (Δlocal)"; then the three
conditions for ``--qkt`` per column (best mean(q,l) of all, local within 2 points, query margin ≥ 20 / 14 over
the best non-QKT method that keeps local; ``qkt_flower.experiments.claims``). ``--margins NAME ...`` adds one
line per named row: its query margin over the column's best in-band competitor (Δlocal), ✓ where all three hold.
Prints Markdown and writes ``claim.md`` / ``claim.json``.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from qkt_flower.experiments.claims import claim_table, columns, margin_table


def fail(message: str) -> None:
    print(f"error: {message}", file=sys.stderr)
    sys.exit(2)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("grids", nargs="+", metavar="LABEL=FOLDER", help="query_grid.py --out folders")
    parser.add_argument("--qkt", default="QKT (default)", help="the QKT row the conditions are checked for")
    parser.add_argument("--margins", nargs="+", default=[], metavar="NAME",
                        help="also a table of these rows' query margins over the best in-band competitor")  # fmt: skip
    parser.add_argument("--out", type=Path, default=Path("outputs/claim"))
    args = parser.parse_args(argv)
    grids = []
    for item in args.grids:
        label, sep, folder = item.partition("=")
        if not sep or not label or not folder:
            fail(f"{item!r} is not LABEL=FOLDER")
        grids.append((label, Path(folder)))
    try:
        cols = columns(grids)
        text, data = claim_table(cols, args.qkt)
        if args.margins:
            extra, data["margins"] = margin_table(cols, args.margins)
            text += "\n\n" + extra
    except (OSError, ValueError) as err:  # a missing folder, a file that is not a query grid
        fail(str(err))
    print(text)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "claim.md").write_text(text + "\n")
    (args.out / "claim.json").write_text(json.dumps(data, indent=1))
    print(f"written: {args.out}/claim.md, claim.json")


if __name__ == "__main__":
    main()
