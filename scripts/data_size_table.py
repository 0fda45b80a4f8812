r"""Which QKT recipe holds across data sizes: query-grid rows at several sizes, one table, a pre-written rule.

Each ``--grid SIZE=DIR[,DIR...]`` names the ``scripts/query_grid.py`` outputs (their ``rows.jsonl``) run at
``SIZE`` training images per class; rows of several folders are merged (a later folder's row replaces an
earlier one for the same cell and method, so new variants can be run apart from old ones on the same cells).

    python scripts/query_grid.py --no-baselines --seeds 0 1 2 --variants ... --out outputs/qg_1000 --extra \
        dataset.train_per_class=1000 dataset.test_per_class=1000
    python scripts/data_size_table.py --seeds 0 1 2 --out results/query_grid_data_size \
        --grid 300=outputs/qg_300 1000=outputs/qg_1000 6000=outputs/qg_full

Prints, per method, mean(query, local) and Δlocal in every (size, split) table, their mean over tables, and
the rule of ``results/query_grid_data_size_plan.md`` (``qkt_flower.experiments.data_size.select``): among
``--candidates`` whose Δlocal ≥ −2 in every table, the highest mean wins; within ``--tie`` points of
``--incumbent`` the incumbent stays. Writes ``table.md`` / ``table.json`` under ``--out``.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from qkt_flower.experiments import data_size

CANDIDATES = ["QKT (default)", "QKT, epochs over the transfer set (previous default)",
              "QKT, paper recipe (two phases, no augmentation, no consistent KD)"]  # fmt: skip


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--grid", nargs="+", required=True, metavar="SIZE=DIR[,DIR...]")
    parser.add_argument("--seeds", type=int, nargs="*", default=None, help="only these seeds (default: all)")
    parser.add_argument("--candidates", nargs="+", default=CANDIDATES)
    parser.add_argument("--incumbent", default="QKT (default)")
    parser.add_argument("--tie", type=float, default=0.5)
    parser.add_argument("--out", type=Path, default=Path("outputs/data_size_table"))
    args = parser.parse_args(argv)
    seeds = set(args.seeds) if args.seeds else None
    try:
        rows, sizes = [], []
        for spec in args.grid:
            size, folders = data_size.parse_grid(spec)
            sizes.append(size)
            rows += data_size.load_rows(size, folders, seeds)
        result = data_size.size_table(rows, sizes, args.candidates, args.incumbent, args.tie)
    except (OSError, ValueError) as err:  # a missing folder, a malformed --grid or rows.jsonl, incomplete candidates
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)
    text = data_size.markdown(result)
    print(text)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "table.md").write_text(text)
    record = {k: result[k] for k in ("tables", "winner", "why")}
    (args.out / "table.json").write_text(json.dumps({**record, "argv": sys.argv[1:] if argv is None else argv,
                                                     "rows": result["rows"]}, indent=1))  # fmt: skip
    print(f"written: {args.out}/table.md, table.json")


if __name__ == "__main__":
    main()
