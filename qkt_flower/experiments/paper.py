"""The paper table: QKT against every baseline from the same Flower runs, and ablations from the reference runner.

A row of the paper's table is only fair when every method saw the same partitions, local models, seeds and test
view: one Flower run per (dataset, query size, seed) runs QKT and then every baseline (``baselines=all``), and
:func:`method_rows` turns its ``results.json`` into one row per method. The ablations are the ``ablations`` list of
``conf/variants.yaml`` (the grid's names, so a name means one set of overrides everywhere), run with the reference
runner on the single-class query with cached local models, so each costs only the query phases.

``scripts/paper_table.py`` runs the jobs; this module plans them and turns their results into tables.
"""

from __future__ import annotations

import re
from pathlib import Path

from qkt_flower.experiments.variants import VARIANTS_FILE, load_variants, pick
from qkt_flower.results import ACCURACIES, mean_std

PRESETS = {
    "quick": {
        "datasets": ["fashion_mnist"],
        "overrides": ["dataset.train_per_class=300", "dataset.test_per_class=200", "baselines.rounds=5",
                      "baselines.eval_rounds=[1,5]"],
        "skip_ablations": ["QKT, probe n = 16", "QKT, probe n = 1024", "QKT, uniform-noise probe", "QKT, λ = 4"],
    },
    "full": {
        "datasets": ["fashion_mnist", "cifar10"],
        "overrides": ["baselines.rounds=50", "baselines.eval_rounds=[1,50]"],
    },
}  # fmt: skip
"""``quick``: Fashion-MNIST at 300 images per class on a laptop; ``full``: full data and 50 rounds (a GPU machine)."""
MODELS = {"fashion_mnist": "cnn", "cifar10": "resnet10", "cifar100": "resnet18", "pathmnist": "resnet10"}
QUERIES = {"single": 1, "multi": 3}
"""The ``query=`` options the table covers, with the number of query classes each means."""
ONE_ROUND = {"ensemble": "ensemble (all models)", "vanilla_kd": "vanilla KD (all teachers)", "feddf": "FedDF fusion"}
FEDERATED = {"fedavg": "FedAvg", "fedprox": "FedProx"}
QKT_STEPS = ("probe", "weights", "qkt")
"""The Flower steps that are QKT's own (local training is every method's common start, so it is not counted)."""
SYMBOLS = {"λ": "lambda", "β": "beta", "γ": "gamma", "%": "pct", "¼": "quarter", "×": "x"}


def run_overrides(dataset: str, query: str, seed: int, cache: Path, preset: str, extra: list[str]) -> list[str]:
    """The Hydra overrides of one (dataset, query, seed) job: the preset's, then ``extra`` (later ones win)."""
    return [f"dataset={dataset}", f"model={MODELS[dataset]}", f"query={query}", f"seed={seed}", "progress=false",
            f"local.cache_dir={cache}", *PRESETS[preset]["overrides"], *extra]  # fmt: skip


def ablations(preset: str, path: Path = VARIANTS_FILE) -> dict[str, list[str]]:
    """``{name: overrides}`` of the ``ablations`` list of ``conf/variants.yaml`` minus the preset's skipped names.

    The quick preset skips the probe-size, probe-kind and λ = 4 rows: each needs its own probe answers, the
    slowest part of an ablation on a laptop, and they move the table least.
    """
    variants, lists = load_variants(path)
    skip = set(PRESETS[preset].get("skip_ablations", ()))
    return pick(variants, [name for name in lists["ablations"] if name not in skip])


def slug(name: str) -> str:
    """A folder name for a variant name (ASCII, no spaces), e.g. ``"QKT, λ = 4"`` → ``"QKT_lambda_4"``."""
    for symbol, word in SYMBOLS.items():
        name = name.replace(symbol, f" {word} ")
    return re.sub(r"[^A-Za-z0-9.]+", "_", name).strip("_")


def _percent(evaluation: dict) -> dict[str, float | None]:
    return {k: None if evaluation.get(k) is None else 100 * evaluation[k] for k in ACCURACIES}


def qkt_bytes(res: dict) -> int:
    """Bytes QKT moved beyond local training: its probe, the experts' weights and the query step, both ways."""
    return sum(res["bytes"][d].get(s, 0) for d in ("sent", "received") for s in QKT_STEPS)


def method_rows(res: dict) -> list[dict]:
    """One row per method of one Flower run: accuracies (%), bytes beyond local training, seconds, rounds.

    Accuracies come from the top-level evaluation objects of ``results.json`` (``before``, ``after``,
    ``control``, ``ensemble``, ``fedavg_<r>rd`` / ``fedavg_<r>rd_ft``, ...); bytes and seconds from the Flower
    bookkeeping (``bytes``, ``seconds``, ``baselines``). The one-round baselines share one cost: every teacher's
    weights to the querying node. A federated baseline's seconds are its run's, pro rata of the rounds.
    """
    seconds, baselines = res["seconds"], res.get("baselines") or {}
    rows = [{"method": "local model", **_percent(res["before"]), "bytes": 0, "seconds": 0.0, "rounds": 0}]
    if res.get("control"):
        rows.append({"method": "balanced-CE control", **_percent(res["control"]), "bytes": 0, "seconds": 0.0,
                     "rounds": 0})  # fmt: skip
    rows.append({"method": "QKT", **_percent(res["after"]), "bytes": qkt_bytes(res),
                 "seconds": sum(seconds.get(s, 0.0) for s in QKT_STEPS), "rounds": 1})  # fmt: skip
    shared = res["bytes"]["received"].get("baselines.weights", 0) + res["bytes"]["sent"].get("baselines", 0)
    for key, label in ONE_ROUND.items():
        if res.get(key):
            rows.append({"method": label, **_percent(res[key]), "bytes": shared,
                         "seconds": res[key].get("seconds", 0.0), "rounds": 1})  # fmt: skip
    for key, label in FEDERATED.items():
        run = baselines.get(key)
        if not run or not run.get("rounds"):
            continue
        per_round = run["seconds"] / max(int(r) for r in run["rounds"])
        for rnd in sorted(run["rounds"], key=int):
            n = int(rnd)
            cost = {"bytes": run["rounds"][rnd]["bytes"], "seconds": per_round * n, "rounds": n}
            for suffix, tail in (("", ""), ("_ft", " + FT")):
                if res.get(f"{key}_{n}rd{suffix}"):
                    rows.append({"method": f"{label} ({n} rd){tail}", **_percent(res[f"{key}_{n}rd{suffix}"]),
                                 **cost})  # fmt: skip
    return rows


def ablation_row(res: dict, dataset: str, seed: int, name: str) -> dict:
    """One reference run of an ablation as a row: bytes = the experts' weights it fetched, seconds = query phases."""
    quality = (res.get("probe") or {}).get("quality") or {}
    return {
        "dataset": dataset, "query": 1, "seed": seed, "method": name, **_percent(res["after"]),
        "bytes": res["bytes"]["expert_weights"],
        "seconds": sum(v for k, v in res["seconds"].items() if k.startswith("query_")),
        "mask_precision": quality.get("precision"), "mask_recall": quality.get("recall"),
    }  # fmt: skip


def aggregate(rows: list[dict], keys: tuple[str, ...]) -> list[dict]:
    """Mean ± std of the accuracies, bytes and seconds, grouped by ``keys`` (order of first appearance kept)."""
    groups: dict[tuple, list[dict]] = {}
    for row in rows:
        groups.setdefault(tuple(row[k] for k in keys), []).append(row)
    out = []
    for key, members in groups.items():
        agg = {**dict(zip(keys, key, strict=True)), "runs": len(members)}
        for col in (*ACCURACIES, "bytes", "seconds"):
            agg[col], agg[f"{col}_std"] = mean_std([r[col] for r in members])
        out.append(agg)
    return out


def markdown(table: list[dict], title: str, reference: str = "local model") -> str:
    """A Markdown table with each row's local-accuracy change against ``reference`` and QKT's query lead over it."""
    ref_local = next((r["local_acc"] for r in table if r["method"] == reference), float("nan"))
    qkt = next((r for r in table if r["method"] in ("QKT", "QKT (default)")), None)
    header = f"| method | query | local | overall | mean(q,l) | Δlocal vs {reference} | QKT − method (query) | MB | s |"
    lines = [f"**{title}**", "", header, "|---|---|---|---|---|---|---|---|---|"]
    for r in table:
        gap = f"{qkt['query_acc'] - r['query_acc']:+.1f}" if qkt and r is not qkt else "—"
        lines.append(
            f"| {r['method']} | {r['query_acc']:.1f} ± {r['query_acc_std']:.1f} | {r['local_acc']:.1f} ± "
            f"{r['local_acc_std']:.1f} | {r['overall_acc']:.1f} | {r['mean_acc']:.1f} | "
            f"{r['local_acc'] - ref_local:+.1f} | {gap} | {r['bytes'] / 1e6:.2f} | {r['seconds']:.1f} |"
        )
    return "\n".join(lines)


def report(table: list[dict], ablation_table: list[dict], datasets: list[str], seeds: list[int]) -> str:
    """Every (dataset, query size) table, then each dataset's ablations, as one Markdown text."""
    parts = []
    for dataset in datasets:
        for q in QUERIES.values():
            part = [r for r in table if r["dataset"] == dataset and r["query"] == q]
            if part:
                parts.append(markdown(part, f"{dataset}, {q}-class query, seeds {seeds}"))
        part = [r for r in ablation_table if r["dataset"] == dataset]
        if part:
            parts.append(markdown(part, f"{dataset} ablations (reference runner), 1-class query", "QKT (default)"))
    return "\n\n".join(parts)
