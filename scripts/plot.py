"""Figures from a paper-table run: per-class accuracy before/after QKT, the λ sweep, accuracy vs bytes.

python scripts/plot.py outputs/paper_table/quick          # writes PNGs next to table.json
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


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("folder", type=Path, help="a paper_table.py output folder (holds table.json)")
    args = parser.parse_args(argv)
    summary = json.loads((args.folder / "table.json").read_text())
    for path in (per_class(args.folder, args.folder), lambda_sweep(summary, args.folder),
                 accuracy_vs_bytes(summary, args.folder)):  # fmt: skip
        if path is not None:
            print(f"written: {path}")


if __name__ == "__main__":
    main()
