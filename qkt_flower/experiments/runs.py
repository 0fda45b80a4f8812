"""Many runs' ``results.json`` as one table: mean ± std over seeds per (dataset, split, query size, shots, method).

A Hydra multirun (``qkt-reference -m seed=0,1,2 ...``) leaves one folder per run; a single seed proves little, so
the runs that differ only in their seed are grouped and averaged (accuracies in %). Both runtimes write the same
``before`` / ``control`` / ``after`` objects; what only one of them records (the reference runner's mask quality,
its dataset and split names) is left empty for the other.
"""

from __future__ import annotations

from qkt_flower.results import ACCURACIES, mean_std

KEYS = ("dataset", "partition", "num_query", "shots", "method")
STAGES = ("before", "control", "after")
"""The local model, the balanced-CE control and the method, as ``results.json`` names them."""


def group_key(run: dict) -> tuple:
    """What a run is, apart from its seed: :data:`KEYS`."""
    return (run.get("dataset"), run.get("partition"), len(run["query_classes"]), run.get("shots"), run.get("method"))


def _run_seconds(run: dict) -> float:
    seconds = run.get("seconds") or {}
    return seconds["total"] if "total" in seconds else sum(seconds.values())  # Flower's parts overlap its total


def summarize_runs(runs: list[dict]) -> list[dict]:
    """One row per :func:`group_key`: runs, seeds, mean ± std of every stage's accuracies (%), mask quality, seconds."""
    groups: dict[tuple, list[dict]] = {}
    for r in runs:
        groups.setdefault(group_key(r), []).append(r)
    rows = []
    for key, rs in sorted(groups.items(), key=lambda kv: str(kv[0])):
        row = {**dict(zip(KEYS, key, strict=True)), "runs": len(rs), "seeds": sorted({r["seed"] for r in rs})}
        for stage in STAGES:
            for m in ACCURACIES:
                values = [100 * r[stage][m] for r in rs if r.get(stage) and r[stage].get(m) is not None]
                row[f"{stage}_{m}"], row[f"{stage}_{m}_std"] = mean_std(values)
        probes = [r.get("probe") or {} for r in rs]
        for q in ("precision", "recall"):
            row[f"mask_{q}"], row[f"mask_{q}_std"] = mean_std([(p.get("quality") or {}).get(q) for p in probes])
            row[f"mask_query_{q}"], _ = mean_std([(p.get("quality_query") or {}).get(q) for p in probes])
        row["seconds"], _ = mean_std([_run_seconds(r) for r in rs])
        rows.append(row)
    return rows


def _fmt(row: dict, key: str) -> str:
    return f"{row[key]:.1f} ± {row[key + '_std']:.1f}"


def markdown(rows: list[dict]) -> str:
    """:func:`summarize_runs` rows as one Markdown table (NaN where a stage or a measure is missing)."""
    head = (
        "| method | partition | #Q | runs | local model: query / local | balanced-CE control: query / local "
        "| method: query / local | mean(q,l) | Δquery | Δlocal | mask P / R (all) | experts of Q: P / R | s/run |"
    )
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for r in rows:
        lines.append(
            f"| {r['method']} | {r['partition']} | {r['num_query']} | {r['runs']} "
            f"| {_fmt(r, 'before_query_acc')} / {_fmt(r, 'before_local_acc')} "
            f"| {_fmt(r, 'control_query_acc')} / {_fmt(r, 'control_local_acc')} "
            f"| {_fmt(r, 'after_query_acc')} / {_fmt(r, 'after_local_acc')} | {_fmt(r, 'after_mean_acc')} "
            f"| {r['after_query_acc'] - r['before_query_acc']:+.1f} "
            f"| {r['after_local_acc'] - r['before_local_acc']:+.1f} "
            f"| {r['mask_precision']:.2f} / {r['mask_recall']:.2f} "
            f"| {r['mask_query_precision']:.2f} / {r['mask_query_recall']:.2f} | {r['seconds']:.0f} |"
        )
    return "\n".join(lines)
