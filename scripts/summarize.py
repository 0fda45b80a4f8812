"""Aggregate the ``results.json`` files of many reference runs into one table (mean ± std over runs).

Usage::

    qkt-reference -m seed=0,1,2 partition=pathological,dirichlet query=single,multi
    python scripts/summarize.py multirun/<date>/<time> --out summary

Prints a Markdown table grouped by (dataset, partition, |Q|, shots, mode) and writes ``summary.json``
and ``summary.csv`` (accuracies in %).
"""

from __future__ import annotations

import argparse
import json
from collections import defaultdict
from pathlib import Path

from qkt_flower.results import find_results, mean_std, write_csv

METRICS = ("query_acc", "local_acc", "overall_acc", "mean_acc")


def group_key(r: dict) -> tuple:
    shots = r.get("shots")
    return (r["dataset"], r["partition"], len(r["query_classes"]), shots, r["mode"])


def summarize(runs: list[dict]) -> list[dict]:
    groups: dict[tuple, list[dict]] = defaultdict(list)
    for r in runs:
        groups[group_key(r)].append(r)
    rows = []
    for key, rs in sorted(groups.items(), key=lambda kv: str(kv[0])):
        row = dict(zip(("dataset", "partition", "num_query", "shots", "mode"), key, strict=True))
        row["runs"] = len(rs)
        row["seeds"] = sorted({r["seed"] for r in rs})
        for stage in ("before", "control", "after"):
            for m in METRICS:
                mean, std = mean_std([100 * r[stage][m] for r in rs if stage in r and r[stage][m] is not None])
                row[f"{stage}_{m}"], row[f"{stage}_{m}_std"] = mean, std
        for q in ("precision", "recall"):
            row[f"mask_{q}"], row[f"mask_{q}_std"] = mean_std([r["probe"]["quality"][q] for r in rs])
            row[f"mask_query_{q}"], _ = mean_std([r["probe"]["quality_query"][q] for r in rs])
        row["seconds"], _ = mean_std([sum(r["seconds"].values()) for r in rs])
        rows.append(row)
    return rows


def fmt(row: dict, key: str) -> str:
    return f"{row[key]:.1f} ± {row[key + '_std']:.1f}"


def markdown(rows: list[dict]) -> str:
    head = (
        "| partition | #Q | runs | local model: query / local | balanced-CE control: query / local "
        "| QKT: query / local | QKT mean | Δquery | Δlocal | mask P / R (all) | experts of Q: P / R | s/run |"
    )
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for r in rows:
        lines.append(
            f"| {r['partition']} | {r['num_query']} | {r['runs']} "
            f"| {fmt(r, 'before_query_acc')} / {fmt(r, 'before_local_acc')} "
            f"| {fmt(r, 'control_query_acc')} / {fmt(r, 'control_local_acc')} "
            f"| {fmt(r, 'after_query_acc')} / {fmt(r, 'after_local_acc')} | {fmt(r, 'after_mean_acc')} "
            f"| {r['after_query_acc'] - r['before_query_acc']:+.1f} "
            f"| {r['after_local_acc'] - r['before_local_acc']:+.1f} "
            f"| {r['mask_precision']:.2f} / {r['mask_recall']:.2f} "
            f"| {r['mask_query_precision']:.2f} / {r['mask_query_recall']:.2f} | {r['seconds']:.0f} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("root", type=Path, help="folder searched recursively for results.json")
    parser.add_argument("--out", type=Path, default=None, help="write <out>.json and <out>.csv")
    args = parser.parse_args()
    runs = find_results(args.root)
    if not runs:
        raise SystemExit(f"error: no results.json under {args.root}")
    rows = summarize(runs)
    print(markdown(rows))
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.with_suffix(".json").write_text(json.dumps(rows, indent=2))
        write_csv(args.out.with_suffix(".csv"), rows)


if __name__ == "__main__":
    main()
