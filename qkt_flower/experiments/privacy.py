"""The probe's privacy: what the server learns of a teacher's classes at each reply-noise scale, and what QKT loses.

A teacher's probe answer (C scores) is its class profile seen through noise inputs; the mask the server computes
from it is the server's guess of which classes the teacher holds. With ``strategy.probe.reply_noise`` each teacher
blurs its answer before it leaves. Mask precision / recall against the true profiles say how much of the profile
the server still recovers; QKT's query accuracy and local Δ say what the blurring costs. Rows come from the
interference grid (:mod:`~qkt_flower.experiments.grid`: ``mask_precision`` / ``mask_recall`` per variant row) with
the ``"QKT, probe noise <scale>"`` variants of ``conf/variants.yaml`` beside ``"QKT (default)"`` (scale 0).
"""

from __future__ import annotations

import re

from qkt_flower.experiments.tables import best_in_band, summarize
from qkt_flower.results import mean_std

DEFAULT = "QKT (default)"
NOISE = re.compile(r"^QKT, probe noise (\d+(?:\.\d+)?)$")


def scale_of(method: str) -> float | None:
    """The reply-noise scale of a QKT row (0 for the default), ``None`` for any other row."""
    if method == DEFAULT:
        return 0.0
    match = NOISE.match(method)
    return float(match.group(1)) if match else None


def privacy_table(rows: list[dict]) -> list[dict]:
    """Per split and noise scale: mask precision / recall, experts, QKT query, Δlocal, margin (percent).

    Mean ± std over the split's cells; the margin is over the best in-band non-QKT row of that split.
    """
    out = []
    for split in dict.fromkeys(r["partition"] for r in rows):
        mine = [r for r in rows if r["partition"] == split]
        rival = best_in_band(summarize(mine))
        scales = sorted({s for r in mine if (s := scale_of(r["method"])) is not None})
        for scale in scales:
            cells = [r for r in mine if scale_of(r["method"]) == scale]
            row = {"partition": split, "reply_noise": scale, "cells": len(cells), "rival": rival["method"]}
            for key in ("mask_precision", "mask_recall", "experts", "query_acc", "local_delta"):
                row[key], row[f"{key}_std"] = mean_std([float(c[key]) for c in cells])
            row["margin"] = row["query_acc"] - rival["query_acc"]
            out.append(row)
    return out


def markdown(table: list[dict]) -> str:
    """The privacy table as Markdown."""
    lines = ["| split | reply noise | mask precision | mask recall | experts K | QKT query | Δlocal | "
             "margin over best in-band |", "|---|---|---|---|---|---|---|---|"]  # fmt: skip
    for r in table:
        lines.append(
            f"| {r['partition']} | {r['reply_noise']:g} | {r['mask_precision']:.1f} ± {r['mask_precision_std']:.1f} "
            f"| {r['mask_recall']:.1f} ± {r['mask_recall_std']:.1f} | {r['experts']:.1f} | {r['query_acc']:.1f} ± "
            f"{r['query_acc_std']:.1f} | {r['local_delta']:+.1f} | {r['margin']:+.1f} ({r['rival']}) |"
        )
    return "\n".join(lines)
