"""Tables of grid rows: mean ± std per (split, method), Markdown, and the claim check.

The claim is the paper's: QKT gains ≥ 20 query points (≥ 14 on multi-class queries) over every other method
while keeping the client's local accuracy; read here as three conditions against every non-QKT row.
"""

from __future__ import annotations

from qkt_flower.results import mean_std

ACC = ("query_acc", "local_acc", "overall_acc", "mean_acc")
Condition = tuple[bool, str, str]  # (passed, the condition, its numbers)


def summarize(rows: list[dict], keys=("partition", "method")) -> list[dict]:
    """Mean ± std per ``keys`` over every (seed, query) cell, in order of first appearance."""
    groups: dict[tuple, list[dict]] = {}
    for r in rows:
        groups.setdefault(tuple(r[k] for k in keys), []).append(r)
    out = []
    for key, members in groups.items():
        agg = {**dict(zip(keys, key, strict=True)), "cells": len(members)}
        for col in (*ACC, "local_delta"):
            agg[col], agg[f"{col}_std"] = mean_std([m[col] for m in members])
        out.append(agg)
    return out


def markdown(table: list[dict], title: str) -> str:
    """A Markdown table of :func:`summarize` rows (percent)."""
    lines = [
        f"**{title}**",
        "",
        "| method | query | local | Δlocal | overall | mean(q,l) |",
        "|---|---|---|---|---|---|",
    ]
    for r in table:
        lines.append(
            f"| {r['method']} | {r['query_acc']:.1f} ± {r['query_acc_std']:.1f} | {r['local_acc']:.1f} ± "
            f"{r['local_acc_std']:.1f} | {r['local_delta']:+.1f} | {r['overall_acc']:.1f} | {r['mean_acc']:.1f} |"
        )
    return "\n".join(lines)


def competitors(table: list[dict]) -> list[dict]:
    """The rows a QKT row is held against: every method not named "QKT…" and not a reference ("oracle…")."""
    return [r for r in table if not r["method"].startswith(("QKT", "oracle"))]


def best_in_band(table: list[dict]) -> dict:
    """The competitor with the highest query accuracy among those keeping local accuracy within 2 points."""
    return max((r for r in competitors(table) if r["local_delta"] >= -2.0), key=lambda r: r["query_acc"])


def claim_conditions(table: list[dict], margin: float, qkt: str = "QKT (default)") -> list[Condition] | None:
    """The claim's three conditions for ``qkt`` against every non-QKT row: ``[(passed, condition, detail), ...]``.

    Rows named "oracle…" (:mod:`~qkt_flower.experiments.headroom`) are references, never a competitor.

    1. best mean(query, local) of all methods; 2. local accuracy within 2 points of the local model;
    3. query accuracy ≥ ``margin`` points above every non-QKT method that also keeps local within 2 points.
    ``None`` when the table has no ``qkt`` row.
    """
    ours = next((r for r in table if r["method"] == qkt), None)
    if ours is None:
        return None
    best_mean = max(competitors(table), key=lambda r: r["mean_acc"])
    best_kept = best_in_band(table)
    gap = ours["query_acc"] - best_kept["query_acc"]
    return [
        (
            ours["mean_acc"] >= best_mean["mean_acc"],
            "best mean(q,l)",
            f"{ours['mean_acc']:.1f} vs {best_mean['mean_acc']:.1f} ({best_mean['method']})",
        ),
        (ours["local_delta"] >= -2.0, "local within 2 points", f"{ours['local_delta']:+.1f}"),
        (
            gap >= margin,
            f"query ≥ {margin:g} points over the best method keeping local",
            f"{gap:+.1f} over {best_kept['method']} ({best_kept['query_acc']:.1f}, Δl {best_kept['local_delta']:+.1f})",
        ),
    ]


def claim_check(table: list[dict], margin: float, qkt: str = "QKT (default)") -> str:
    """:func:`claim_conditions` as Markdown bullets, with the shortfall where one fails."""
    conditions = claim_conditions(table, margin, qkt)
    if conditions is None:
        return f"- (no {qkt!r} row: no claim check)"
    return "\n".join(f"- {'PASS' if ok else 'FAIL'}: {name}: {detail}" for ok, name, detail in conditions)


def margin_for(queries) -> float:
    """The paper's claim: ≥ 14 query points on multi-class queries, ≥ 20 on single-class ones."""
    return 14.0 if any("," in q for q in queries) else 20.0


def report(rows: list[dict], partitions: list[str], check: list[str]) -> tuple[str, list[dict]]:
    """``(Markdown of a table + claim checks per split, the summary table)``."""
    table = summarize(rows)
    margin = margin_for(r["query"] for r in rows)
    parts = []
    for p in partitions:
        part = [r for r in table if r["partition"] == p]
        if part:
            seeds = sorted({r["seed"] for r in rows if r["partition"] == p})
            queries = list(dict.fromkeys(r["query"] for r in rows if r["partition"] == p))
            checks = "\n\n".join(f"Claim check, {name}:\n" + claim_check(part, margin, name) for name in check)
            parts.append(markdown(part, f"{p}: seeds {seeds} x queries {queries}") + "\n\n" + checks)
    return "\n\n".join(parts), table
