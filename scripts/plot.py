"""Figures from a paper-table run (per-class accuracy, the λ sweep, accuracy vs bytes) or a query grid (trade-off).

    python scripts/plot.py outputs/paper_table/quick          # writes PNGs next to table.json
    python scripts/plot.py outputs/query_grid                 # trade_off.png next to grid.json

The figures are drawn by ``qkt_flower.experiments.figures``.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def fail(message: str) -> None:
    print(f"error: {message}", file=sys.stderr)
    sys.exit(2)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("folder", type=Path, help="a paper_table.py (table.json) or query_grid.py (grid.json) folder")
    args = parser.parse_args(argv)
    grid, table = args.folder / "grid.json", args.folder / "table.json"
    if not (grid.is_file() or table.is_file()):  # said before torch and matplotlib load: an instant answer
        fail(f"{args.folder} holds neither table.json (paper_table.py) nor grid.json (query_grid.py)")
    from qkt_flower.config import load_config
    from qkt_flower.experiments import figures
    from qkt_flower.experiments.variants import load_variants

    try:
        if grid.is_file():
            paths = [figures.trade_off(json.loads(grid.read_text()), args.folder)]
        else:
            summary = json.loads(table.read_text())
            lambdas = figures.mask_lambdas(load_variants()[0], load_config([]).strategy.mask.lam)
            paths = [figures.per_class(args.folder, args.folder), figures.lambda_sweep(summary, args.folder, lambdas),
                     figures.accuracy_vs_bytes(summary, args.folder)]  # fmt: skip
    except KeyError as err:
        fail(f"{args.folder}: not a paper_table.py or query_grid.py output (no {err} entry)")
    except (OSError, ValueError) as err:  # a missing folder or file, a file that is not JSON
        fail(str(err))
    for path in paths:
        if path is not None:
            print(f"written: {path}")


if __name__ == "__main__":
    main()
