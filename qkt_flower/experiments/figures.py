"""Figures of a paper-table run (per-class accuracy, the λ sweep, accuracy vs bytes) and of a query grid (trade-off).

Each function draws one PNG next to the data it comes from and returns its path, or ``None`` when the data for
it is not there (e.g. a paper table run with ``--no-ablations`` has no λ sweep).
"""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only: no display on a server
import matplotlib.pyplot as plt  # noqa: E402

from qkt_flower.experiments.paper import slug  # noqa: E402
from qkt_flower.results import load_results  # noqa: E402

LAM = "strategy.mask.lam="


def _save(fig, path: Path, dpi: int = 120) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=dpi)
    plt.close(fig)
    return path


def mask_lambdas(variants: dict[str, list[str]], default: float) -> dict[str, float]:
    """``{variant name: λ}`` of the variants that change only the mask's λ, plus "QKT (default)" at ``default``."""
    out = {"QKT (default)": default}
    for name, overrides in variants.items():
        if len(overrides) == 1 and overrides[0].startswith(LAM):
            out[name] = float(overrides[0].removeprefix(LAM))
    return out


def per_class(folder: Path, out: Path) -> Path | None:
    """Bars of per-class accuracy before (local model) and after QKT, one panel per seed ("QKT (default)" runs)."""
    runs = sorted(folder.glob(f"ablations/*-{slug('QKT (default)')}"))
    if not runs:
        return None
    fig, axes = plt.subplots(1, len(runs), figsize=(4.5 * len(runs), 3.4), squeeze=False)
    for ax, run in zip(axes[0], runs, strict=True):
        res = load_results(run)
        before, after = res["before"]["per_class_acc"], res["after"]["per_class_acc"]
        classes = sorted(before, key=int)
        x = range(len(classes))
        ax.bar([i - 0.2 for i in x], [100 * (before[c] or 0) for c in classes], 0.4, label="local")
        ax.bar([i + 0.2 for i in x], [100 * (after[c] or 0) for c in classes], 0.4, label="QKT")
        for i, c in enumerate(classes):
            if int(c) in res["query_classes"]:
                ax.annotate("query", (i, 102), ha="center", fontsize=7)
        ax.set_xticks(list(x), [res["classes"][int(c)][:10] for c in classes], rotation=30, fontsize=7)
        ax.set_ylim(0, 110)
        ax.set_title(f"seed {res['seed']}", fontsize=9)
    axes[0][0].set_ylabel("test accuracy (%)")
    axes[0][0].legend(fontsize=7)
    return _save(fig, out / "per_class.png")


def lambda_sweep(summary: dict, out: Path, lambdas: dict[str, float]) -> Path | None:
    """Query/local accuracy and mask precision/recall against λ (mean over seeds); ``lambdas``: name → λ."""
    rows = sorted((r for r in summary["ablations"] if r["method"] in lambdas), key=lambda r: lambdas[r["method"]])
    if len(rows) < 2:
        return None
    lam = [lambdas[r["method"]] for r in rows]
    by_method: dict[str, list[dict]] = {}
    for r in summary["ablation_rows"]:
        by_method.setdefault(r["method"], []).append(r)
    fig, ax = plt.subplots(figsize=(5, 3.4))
    for key, label in (("query_acc", "query acc"), ("local_acc", "local acc")):
        ax.errorbar(lam, [r[key] for r in rows], [r[f"{key}_std"] for r in rows], marker="o", capsize=3, label=label)
    for key, label in (("mask_precision", "mask precision"), ("mask_recall", "mask recall")):
        values = []
        for r in rows:
            got = [x[key] for x in by_method[r["method"]] if x.get(key) is not None]
            values.append(100 * sum(got) / len(got) if got else float("nan"))
        ax.plot(lam, values, "--", marker="s", label=label)
    ax.set_xscale("log", base=2)
    ax.set_xlabel("λ (expert if score ≥ λ/C)")
    ax.set_ylabel("%")
    ax.legend(fontsize=7)
    return _save(fig, out / "lambda_sweep.png")


def accuracy_vs_bytes(summary: dict, out: Path) -> Path | None:
    """Query-class accuracy of every method against the bytes it moved beyond local training (log scale)."""
    table = summary["table"]
    if not table:
        return None
    queries = sorted({r["query"] for r in table})
    fig, axes = plt.subplots(1, len(queries), figsize=(6 * len(queries), 4.2), squeeze=False)
    for ax, q in zip(axes[0], queries, strict=True):
        for r in (r for r in table if r["query"] == q):
            mb = max(r["bytes"] / 1e6, 1e-3)
            star = r["method"] == "QKT"
            ax.scatter(mb, r["query_acc"], marker="*" if star else "o", s=120 if star else 30)
            ax.annotate(r["method"], (mb, r["query_acc"]), fontsize=6, xytext=(3, 3), textcoords="offset points")
        ax.set_xscale("log")
        ax.set_xlabel("MB moved beyond local training (0 shown at 1e-3)")
        ax.set_ylabel("query-class accuracy (%)")
        ax.set_title(f"{q}-class query", fontsize=9)
    return _save(fig, out / "accuracy_vs_bytes.png")


def _family(method: str) -> str:
    return "QKT" if method.startswith("QKT") else "control" if method.startswith("balanced-CE") else "other"


def trade_off(grid: dict, out: Path) -> Path | None:
    """Query accuracy against Δlocal per method, one panel per split (QKT vs the control at equal local cost).

    QKT variants and controls are joined in order of Δlocal (e.g. calibration budgets); the dashed line is the
    claim's local band (−2 points).
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
    return _save(fig, out / "trade_off.png", dpi=150)
