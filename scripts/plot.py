"""Figures from a paper-table run (per-class accuracy, the λ sweep, accuracy vs bytes) or a query grid (trade-off).

python scripts/plot.py outputs/paper_table/quick          # writes PNGs next to table.json
python scripts/plot.py outputs/query_grid                 # trade_off.png next to grid.json
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from qkt_flower.results import load_results  # noqa: E402

LAMBDAS = {"lambda=0.5": 0.5, "QKT (default)": 1.0, "lambda=2": 2.0, "lambda=4": 4.0}


def per_class(folder: Path, out: Path) -> Path | None:
    """Bars of per-class accuracy before (local model) and after QKT, one panel per seed."""
    runs = sorted(folder.glob("ablations/*-QKT_default"))
    if not runs:
        return None
    fig, axes = plt.subplots(1, len(runs), figsize=(4.5 * len(runs), 3.4), squeeze=False)
    for ax, run in zip(axes[0], runs, strict=True):
        res = load_results(run)
        classes = sorted(res["before"]["per_class_acc"], key=int)
        names = [res["classes"][int(c)][:10] for c in classes]
        x = range(len(classes))
        ax.bar([i - 0.2 for i in x], [100 * res["before"]["per_class_acc"][c] for c in classes], 0.4, label="local")
        ax.bar([i + 0.2 for i in x], [100 * res["after"]["per_class_acc"][c] for c in classes], 0.4, label="QKT")
        for i, c in enumerate(classes):
            if int(c) in res["query_classes"]:
                ax.annotate("query", (i, 102), ha="center", fontsize=7)
        ax.set_xticks(list(x), names, rotation=30, fontsize=7)
        ax.set_ylim(0, 110)
        ax.set_title(f"seed {res['seed']}", fontsize=9)
    axes[0][0].set_ylabel("test accuracy (%)")
    axes[0][0].legend(fontsize=7)
    fig.tight_layout()
    path = out / "per_class.png"
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def lambda_sweep(summary: dict, out: Path) -> Path | None:
    """Query/local accuracy and mask precision/recall against λ (mean over seeds)."""
    rows = [r for r in summary["ablations"] if r["method"] in LAMBDAS]
    if len(rows) < 2:
        return None
    rows.sort(key=lambda r: LAMBDAS[r["method"]])
    lam = [LAMBDAS[r["method"]] for r in rows]
    by_method = {}
    for r in summary["ablation_rows"]:
        by_method.setdefault(r["method"], []).append(r)
    fig, ax = plt.subplots(figsize=(5, 3.4))
    for key, label in (("query_acc", "query acc"), ("local_acc", "local acc")):
        ax.errorbar(lam, [r[key] for r in rows], [r[f"{key}_std"] for r in rows], marker="o", capsize=3, label=label)
    for key, label in (("mask_precision", "mask precision"), ("mask_recall", "mask recall")):
        values = [100 * sum(x[key] for x in by_method[r["method"]]) / len(by_method[r["method"]]) for r in rows]
        ax.plot(lam, values, "--", marker="s", label=label)
    ax.set_xscale("log", base=2)
    ax.set_xlabel("λ (expert if score ≥ λ/C)")
    ax.set_ylabel("%")
    ax.legend(fontsize=7)
    fig.tight_layout()
    path = out / "lambda_sweep.png"
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def accuracy_vs_bytes(summary: dict, out: Path) -> Path | None:
    """Query- and local-class accuracy of every method against the bytes it moved (log scale)."""
    table = summary["table"]
    if not table:
        return None
    queries = sorted({r["query"] for r in table})
    fig, axes = plt.subplots(1, len(queries), figsize=(6 * len(queries), 4.2), squeeze=False)
    for ax, q in zip(axes[0], queries, strict=True):
        for r in (r for r in table if r["query"] == q):
            mb = max(r["bytes"] / 1e6, 1e-3)
            marker = "*" if r["method"] == "QKT" else "o"
            ax.scatter(mb, r["query_acc"], marker=marker, s=120 if marker == "*" else 30)
            ax.annotate(r["method"], (mb, r["query_acc"]), fontsize=6, xytext=(3, 3), textcoords="offset points")
        ax.set_xscale("log")
        ax.set_xlabel("MB moved beyond local training (0 shown at 1e-3)")
        ax.set_ylabel("query-class accuracy (%)")
        ax.set_title(f"{q}-class query", fontsize=9)
    fig.tight_layout()
    path = out / "accuracy_vs_bytes.png"
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def _family(method: str) -> str:
    return "QKT" if method.startswith("QKT") else "control" if method.startswith("balanced-CE") else "other"


def trade_off(grid: dict, out: Path) -> Path | None:
    """Query accuracy against Δlocal per method, one panel per split (QKT vs the control at equal local cost).

    QKT variants and controls are joined in order of Δlocal (e.g. calibration budgets); the dashed line
    is the issue's local band (−2 points).
    """
    table = grid["table"]
    parts = list(dict.fromkeys(r["partition"] for r in table))
    if not parts:
        return None
    colours = {"QKT": "tab:red", "control": "tab:blue", "other": "tab:gray"}
    fig, axes = plt.subplots(1, len(parts), figsize=(5.5 * len(parts), 4.2), squeeze=False)
    for ax, part in zip(axes[0], parts, strict=True):
        rows = [r for r in table if r["partition"] == part]
        for fam, colour in colours.items():
            members = sorted((r for r in rows if _family(r["method"]) == fam), key=lambda r: r["local_delta"])
            if fam != "other" and len(members) > 1:
                ax.plot([r["local_delta"] for r in members], [r["query_acc"] for r in members], "-", color=colour,
                        alpha=0.4)  # fmt: skip
            for r in members:
                ax.scatter(r["local_delta"], r["query_acc"], color=colour, s=25)
                ax.annotate(r["method"].replace("balanced-CE ", ""), (r["local_delta"], r["query_acc"]), fontsize=5,
                            xytext=(3, 2), textcoords="offset points")  # fmt: skip
        ax.axvline(-2.0, ls="--", color="k", lw=0.8)
        ax.set_xlabel("Δ local-class accuracy vs the local model (points)")
        ax.set_ylabel("query-class accuracy (%)")
        ax.set_title(part, fontsize=9)
    fig.tight_layout()
    path = out / "trade_off.png"
    fig.savefig(path, dpi=150)
    plt.close(fig)
    return path


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("folder", type=Path, help="a paper_table.py (table.json) or query_grid.py (grid.json) folder")
    args = parser.parse_args(argv)
    if (args.folder / "grid.json").is_file():
        paths = [trade_off(json.loads((args.folder / "grid.json").read_text()), args.folder)]
    elif (args.folder / "table.json").is_file():
        summary = json.loads((args.folder / "table.json").read_text())
        paths = [per_class(args.folder, args.folder), lambda_sweep(summary, args.folder),
                 accuracy_vs_bytes(summary, args.folder)]  # fmt: skip
    else:
        parser.error(f"{args.folder} holds neither table.json (paper_table.py) nor grid.json (query_grid.py)")
    for path in paths:
        if path is not None:
            print(f"written: {path}")


if __name__ == "__main__":
    main()
