r"""Which QKT recipe holds across data sizes: query-grid rows at several sizes, one table, a pre-written rule.

Each ``--grid SIZE=DIR[,DIR...]`` names the ``scripts/query_grid.py`` outputs (their ``rows.jsonl``) run at
``SIZE`` training images per class; rows of several folders are merged (a later folder's row replaces an
earlier one for the same cell and method, so new variants can be run apart from old ones on the same cells).

    python scripts/query_grid.py --no-baselines --seeds 0 1 2 --variants ... --out outputs/qg_1000 --extra \
        dataset.train_per_class=1000 dataset.test_per_class=1000
    python scripts/data_size_table.py --seeds 0 1 2 --out results/query_grid_data_size \
        --grid 300=outputs/qg_300 1000=outputs/qg_1000 6000=outputs/qg_full

Prints, per method, mean(query, local) and Δlocal in every (size, split) table, their mean over tables, and
the rule of ``results/query_grid_data_size_plan.md``: among ``--candidates`` whose Δlocal ≥ −2 in every
table, the highest mean wins; within ``--tie`` points of ``--incumbent`` the incumbent stays. Writes
``table.md`` / ``table.json`` under ``--out``.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from query_grid import ACC, summarize  # noqa: E402

from qkt_flower.results import mean_std  # noqa: E402


def load_rows(spec: str, seeds: set[int] | None) -> tuple[str, list[dict]]:
    """``SIZE=DIR[,DIR...]`` -> (size, merged rows of those seeds, tagged with the size)."""
    size, _, dirs = spec.partition("=")
    if not dirs:
        raise SystemExit(f"error: --grid {spec!r} is not SIZE=DIR[,DIR...]")
    merged: dict[tuple, dict] = {}
    for folder in dirs.split(","):
        path = Path(folder) / "rows.jsonl"
        if not path.is_file():
            raise SystemExit(f"error: {path} not found (run scripts/query_grid.py --out {folder} first)")
        for line in path.read_text().splitlines():
            if line.strip():
                r = json.loads(line)
                if seeds is None or r["seed"] in seeds:
                    merged[(r["partition"], r["seed"], r["query"], r["method"])] = {**r, "size": size}
    return size, list(merged.values())


def _cell(r: dict) -> tuple:
    return r["size"], r["partition"], r["seed"], r["query"]


def incomplete_methods(rows: list[dict], methods: list[str]) -> list[str]:
    """Methods missing from some (size, split) cell another method has: their means would not be comparable."""
    cells = {_cell(r) for r in rows}
    have: dict[str, set] = {}
    for r in rows:
        have.setdefault(r["method"], set()).add(_cell(r))
    return [m for m in methods if have.get(m, set()) != cells]


def select(tables: dict[str, dict], candidates: list[str], incumbent: str, tie: float) -> tuple[str | None, str]:
    """The plan's rule: eligible = Δlocal ≥ −2 in every table; best mean wins unless within ``tie`` of the incumbent."""
    eligible = [c for c in candidates if c in tables and all(d >= -2.0 for d in tables[c]["deltas"])]
    if not eligible:
        return None, "no candidate keeps Δlocal ≥ −2 in every table"
    best = max(eligible, key=lambda c: tables[c]["mean"])
    if best != incumbent and incumbent in eligible and tables[best]["mean"] - tables[incumbent]["mean"] < tie:
        return incumbent, f"{best} leads {incumbent} by < {tie:g}: the incumbent stays"
    return best, f"highest mean of the eligible candidates ({', '.join(eligible)})"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--grid", nargs="+", required=True, metavar="SIZE=DIR[,DIR...]")
    parser.add_argument("--seeds", type=int, nargs="*", default=None, help="only these seeds (default: all)")
    parser.add_argument("--candidates", nargs="+", default=["QKT (default)", "QKT, 320 samples per epoch",
                        "QKT, paper recipe (two phases, no augmentation, no consistent KD)"])  # fmt: skip
    parser.add_argument("--incumbent", default="QKT (default)")
    parser.add_argument("--tie", type=float, default=0.5)
    parser.add_argument("--out", type=Path, default=Path("outputs/data_size_table"))
    args = parser.parse_args(argv)
    seeds = set(args.seeds) if args.seeds else None
    rows: list[dict] = []
    sizes = []
    for spec in args.grid:
        size, part = load_rows(spec, seeds)
        sizes.append(size)
        rows += part
    methods = list(dict.fromkeys(r["method"] for r in rows if r["method"] != "local model"))
    missing = incomplete_methods(rows, methods)
    if set(missing) & set(args.candidates):
        raise SystemExit(f"error: candidates not run on every cell: {sorted(set(missing) & set(args.candidates))}")
    methods = [m for m in methods if m not in missing]
    rows = [r for r in rows if r["method"] not in missing]
    note = f"Left out (not run on every cell): {', '.join(missing)}.\n\n" if missing else ""
    summary = summarize(rows, keys=("size", "partition", "method"))
    splits = list(dict.fromkeys(r["partition"] for r in rows))
    columns = [(s, p) for s in sizes for p in splits]
    by = {(r["size"], r["partition"], r["method"]): r for r in summary}
    tables = {}
    for m in methods:
        got = [by[(s, p, m)] for s, p in columns if (s, p, m) in by]
        tables[m] = {
            "cells": {f"{s}/{p}": {k: by[(s, p, m)][k] for k in (*ACC, "local_delta")} for s, p in columns},
            "mean": mean_std([g["mean_acc"] for g in got])[0],
            "deltas": [g["local_delta"] for g in got],
        }
    winner, why = select(tables, args.candidates, args.incumbent, args.tie)
    head = "| method | " + " | ".join(f"{s}/class {p}" for s, p in columns) + " | mean |"
    lines = [head, "|---|" + "---|" * (len(columns) + 1)]
    for m in methods:
        cells = [tables[m]["cells"][f"{s}/{p}"] for s, p in columns]
        text = [f"{c['query_acc']:.1f} / {c['local_acc']:.1f} ({c['mean_acc']:.1f}, Δl {c['local_delta']:+.1f})"
                for c in cells]  # fmt: skip
        lines.append(f"| {m} | " + " | ".join(text) + f" | {tables[m]['mean']:.1f} |")
    n = len({_cell(r) for r in rows})
    seed_text = sorted({r["seed"] for r in rows})
    text = (
        f"Query / local (mean(q,l), Δlocal) per (images per class, split); seeds {seed_text}, {n} cells.\n\n"
        + "\n".join(lines)
        + f"\n\n{note}Selection rule: {winner or 'none'} — {why}.\n"
    )
    print(text)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "table.md").write_text(text)
    (args.out / "table.json").write_text(json.dumps({"tables": tables, "winner": winner, "why": why,
                                                     "argv": sys.argv[1:], "rows": rows}, indent=1))  # fmt: skip
    print(f"written: {args.out}/table.md, table.json")


if __name__ == "__main__":
    main()
