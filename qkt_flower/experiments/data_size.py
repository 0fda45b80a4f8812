"""Which QKT recipe holds across data sizes: query-grid rows at several sizes, one table, a rule written beforehand.

A recipe chosen at one data size can lose its local band at another, so the choice is made over every (images per
class, split) table at once, by the rule of ``results/query_grid_data_size_plan.md`` (:func:`select`): among the
candidates whose Δlocal ≥ −2 in every table, the highest mean of mean(query, local) wins; a lead within ``tie``
points of the incumbent keeps the incumbent. Rows come from ``scripts/query_grid.py`` folders (``rows.jsonl``);
several folders per size are merged, so new variants can run apart from old ones on the same cells.
"""

from __future__ import annotations

import json
from pathlib import Path

from qkt_flower.experiments.tables import ACC, summarize
from qkt_flower.results import mean_std

BAND = -2.0
"""The local band: a candidate whose Δlocal drops below it in any table is not eligible."""


def parse_grid(spec: str) -> tuple[str, list[Path]]:
    """``"SIZE=DIR[,DIR...]"`` → ``(size, folders)``; ``ValueError`` when it is not of that form."""
    size, _, dirs = spec.partition("=")
    if not size or not dirs:
        raise ValueError(f"--grid {spec!r} is not SIZE=DIR[,DIR...]")
    return size, [Path(d) for d in dirs.split(",")]


def load_rows(size: str, folders: list[Path], seeds: set[int] | None = None) -> list[dict]:
    """The rows of ``folders`` (of ``seeds``; all when ``None``), tagged with ``size``.

    A later folder's row replaces an earlier one for the same (split, seed, query, method).
    """
    merged: dict[tuple, dict] = {}
    for folder in folders:
        path = folder / "rows.jsonl"
        if not path.is_file():
            raise FileNotFoundError(f"{path} not found (run scripts/query_grid.py --out {folder} first)")
        for line in path.read_text().splitlines():
            if line.strip():
                r = json.loads(line)
                if seeds is None or r["seed"] in seeds:
                    merged[(r["partition"], r["seed"], r["query"], r["method"])] = {**r, "size": size}
    return list(merged.values())


def _cell(r: dict) -> tuple:
    return r["size"], r["partition"], r["seed"], r["query"]


def incomplete_methods(rows: list[dict], methods: list[str]) -> list[str]:
    """Methods missing from some (size, split, seed, query) cell another method has: their means would not compare."""
    cells = {_cell(r) for r in rows}
    have: dict[str, set] = {}
    for r in rows:
        have.setdefault(r["method"], set()).add(_cell(r))
    return [m for m in methods if have.get(m, set()) != cells]


def select(tables: dict[str, dict], candidates: list[str], incumbent: str, tie: float) -> tuple[str | None, str]:
    """The plan's rule: eligible = Δlocal ≥ −2 in every table; best mean wins unless within ``tie`` of the incumbent."""
    eligible = [c for c in candidates if c in tables and all(d >= BAND for d in tables[c]["deltas"])]
    if not eligible:
        return None, "no candidate keeps Δlocal ≥ −2 in every table"
    best = max(eligible, key=lambda c: tables[c]["mean"])
    if best != incumbent and incumbent in eligible and tables[best]["mean"] - tables[incumbent]["mean"] < tie:
        return incumbent, f"{best} leads {incumbent} by < {tie:g}: the incumbent stays"
    return best, f"highest mean of the eligible candidates ({', '.join(eligible)})"


def size_table(rows: list[dict], sizes: list[str], candidates: list[str], incumbent: str, tie: float) -> dict:
    """Per method: every (size, split) cell's accuracies, their mean of mean(q,l), the Δlocals; then the rule.

    Methods not run on every cell are left out (and listed); a candidate among them is a ``ValueError``, since
    the rule would compare means over different cells. Returns ``{"tables", "columns", "left_out", "winner",
    "why", "rows"}``.
    """
    methods = list(dict.fromkeys(r["method"] for r in rows if r["method"] != "local model"))
    missing = incomplete_methods(rows, methods)
    if set(missing) & set(candidates):
        raise ValueError(f"candidates not run on every cell: {sorted(set(missing) & set(candidates))}")
    rows = [r for r in rows if r["method"] not in missing]
    by = {(r["size"], r["partition"], r["method"]): r for r in summarize(rows, keys=("size", "partition", "method"))}
    present = {(r["size"], r["partition"]) for r in rows}
    columns = [(s, p) for s in sizes for p in dict.fromkeys(r["partition"] for r in rows) if (s, p) in present]
    tables = {}
    for m in (m for m in methods if m not in missing):
        got = [by[(s, p, m)] for s, p in columns if (s, p, m) in by]
        tables[m] = {
            "cells": {f"{s}/{p}": {k: by[(s, p, m)][k] for k in (*ACC, "local_delta")} for s, p in columns},
            "mean": mean_std([g["mean_acc"] for g in got])[0],
            "deltas": [g["local_delta"] for g in got],
        }
    winner, why = select(tables, candidates, incumbent, tie)
    return {"tables": tables, "columns": [f"{s}/{p}" for s, p in columns], "left_out": missing, "winner": winner,
            "why": why, "rows": rows}  # fmt: skip


def markdown(result: dict) -> str:
    """:func:`size_table`'s result as Markdown: query / local (mean, Δlocal) per column, the left-out, the rule."""
    cols = result["columns"]
    lines = ["| method | " + " | ".join(f"{c.split('/')[0]}/class {c.split('/', 1)[1]}" for c in cols) + " | mean |",
             "|---|" + "---|" * (len(cols) + 1)]  # fmt: skip
    for m, t in result["tables"].items():
        cells = [t["cells"][c] for c in cols]
        text = [f"{c['query_acc']:.1f} / {c['local_acc']:.1f} ({c['mean_acc']:.1f}, Δl {c['local_delta']:+.1f})"
                for c in cells]  # fmt: skip
        lines.append(f"| {m} | " + " | ".join(text) + f" | {t['mean']:.1f} |")
    rows = result["rows"]
    seeds, n = sorted({r["seed"] for r in rows}), len({_cell(r) for r in rows})
    note = f"Left out (not run on every cell): {', '.join(result['left_out'])}.\n\n" if result["left_out"] else ""
    head = f"Query / local (mean(q,l), Δlocal) per (images per class, split); seeds {seeds}, {n} cells."
    rule = f"Selection rule: {result['winner'] or 'none'} — {result['why']}."
    return f"{head}\n\n" + "\n".join(lines) + f"\n\n{note}{rule}\n"
