"""The paper's headline metric and the in-band margin, one row per table of the committed query grids.

    python scripts/headline.py [--grid results/query_grid_claim.json results/cifar10_subset_grid.json] [--out results]

Writes ``headline.json`` (the list of tables) and ``headline.md`` (the Markdown, also printed) into ``--out``.
A missing or malformed grid file is one ``error:`` line on stderr and exit code 2.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from qkt_flower.experiments.headline import build, markdown


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    grids = ["results/query_grid_claim.json", "results/cifar10_subset_grid.json"]
    parser.add_argument("--grid", nargs="+", default=grids, help="query grid JSON files")
    parser.add_argument("--out", type=Path, default=Path("results"), help="folder for headline.json / headline.md")
    args = parser.parse_args(argv)
    try:
        tables = build(args.grid)
    except (OSError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)
    if not tables:
        print("error: no table with a 'QKT (default)' row in " + ", ".join(args.grid), file=sys.stderr)
        sys.exit(2)
    text = markdown(tables)
    print(text)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "headline.json").write_text(json.dumps(tables, indent=1, ensure_ascii=False) + "\n")
    (args.out / "headline.md").write_text(text + "\n")
    print(f"written: {args.out}/headline.json, headline.md")


if __name__ == "__main__":
    main()
