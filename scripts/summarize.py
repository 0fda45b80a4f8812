"""Aggregate the ``results.json`` files of many runs into one table (mean ± std over seeds).

Usage::

    qkt-reference -m seed=0,1,2 partition=pathological,dirichlet query=single,multi
    python scripts/summarize.py multirun/<date>/<time> --out summary

Prints a Markdown table grouped by (dataset, partition, |Q|, shots, method) (``qkt_flower.experiments.runs``) and
writes ``<out>.json`` and ``<out>.csv`` (accuracies in %).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from qkt_flower.experiments.runs import markdown, summarize_runs
from qkt_flower.results import find_results, write_csv


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("root", type=Path, help="folder searched recursively for results.json")
    parser.add_argument("--out", type=Path, default=None, help="write <out>.json and <out>.csv")
    args = parser.parse_args(argv)
    try:
        runs = find_results(args.root)
    except (OSError, ValueError) as err:  # unreadable, not JSON, or not a qkt-flower results.json
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)
    if not runs:
        print(f"error: no results.json under {args.root}", file=sys.stderr)
        sys.exit(2)
    rows = summarize_runs(runs)
    print(markdown(rows))
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.with_suffix(".json").write_text(json.dumps(rows, indent=2))
        write_csv(args.out.with_suffix(".csv"), rows)
        print(f"written: {args.out.with_suffix('.json')}, {args.out.with_suffix('.csv')}")


if __name__ == "__main__":
    main()
