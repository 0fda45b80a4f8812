"""The paper table: QKT vs every baseline, same harness, same partitions/models/seeds/test view.

One Flower simulation per (dataset, query size, seed) runs QKT and then every baseline on the same grid
(``baselines=all``): local model, balanced-CE control, QKT, ensemble, vanilla KD, FedDF (one round), FedAvg and
FedProx at one round and at the converged budget, each also with local fine-tuning (+FT). Ablations run with the
reference runner on the single-class query (local models cached, so each costs only the query phases).

    python scripts/paper_table.py --preset quick            # Fashion-MNIST, 300 images/class, 2 CPU cores
    python scripts/paper_table.py --preset full              # full data, 50 rounds: a GPU machine

Prints Markdown tables (mean ± std over seeds) and writes ``table.csv``, ``table.json``, ``ablations.csv`` and
every run's ``results.json`` under ``--out`` (default ``outputs/paper_table/<preset>``).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from omegaconf import OmegaConf
from tqdm.auto import tqdm

from qkt_flower.config import compose_config, to_config
from qkt_flower.errors import ConfigError, DataNotFoundError
from qkt_flower.results import load_results, mean_std, write_csv

PRESETS = {
    "quick": {
        "datasets": ["fashion_mnist"],
        "overrides": ["dataset.train_per_class=300", "dataset.test_per_class=200", "baselines.rounds=5",
                      "baselines.eval_rounds=[1,5]"],
        "skip_ablations": ["probe n=16", "probe n=1024", "uniform noise", "lambda=4", "synthetic query inputs"],
    },
    "full": {
        "datasets": ["fashion_mnist", "cifar10"],
        "overrides": ["baselines.rounds=50", "baselines.eval_rounds=[1,50]"],
    },
}  # fmt: skip
MODELS = {"fashion_mnist": "cnn", "cifar10": "resnet10", "cifar100": "resnet18", "pathmnist": "resnet10"}
QUERIES = {"single": 1, "multi": 3}
ABLATIONS = {
    "QKT (default)": [],
    "two phases (the paper's)": ["strategy.mode=two-phase"],
    "two phases, no phase 2": ["strategy.mode=phase1"],
    "QKT Light": ["strategy.mode=light"],
    "no L_keep": ["strategy.phase2.gamma=0"],
    "balanced L_keep": ["strategy.kd.keep_balanced=true"],
    "consistent L_keep": ["strategy.kd.keep_consistent=true"],
    "no query distillation (beta=0)": ["strategy.phase1.beta=0"],
    "no calibration": ["strategy.calibration.max_false_query=null"],
    "calibration 2 %": ["strategy.calibration.max_false_query=0.02"],
    "calibration on 20 % hold-out": ["strategy.calibration.holdout=0.2"],
    "calibration on own images, no jittered local images (previous default)": [
        "strategy.augment_local=0",
        "strategy.calibration.augment=0",
    ],
    "no jittered local images": ["strategy.augment_local=0"],
    "no consistent KD": ["strategy.kd.consistent=false"],
    "no augmented shots": ["strategy.augment_shots=0"],
    "no augmentation at all": [
        "strategy.augment_shots=0",
        "strategy.augment_local=0",
        "strategy.calibration.augment=0",
    ],
    "epochs over the transfer set": ["strategy.phase1.epoch_samples=null", "strategy.phase2.epoch_samples=null"],
    "shot-weighted experts": ["strategy.kd.weighting=shots"],
    "expert-labelled mixes": ["strategy.mix.weight=1.0"],
    "relational feature KD": ["strategy.relation.weight=10.0"],
    "balance every present class": ["strategy.phase1.balance_over=present", "strategy.phase2.balance_over=present"],
    "no mask": ["strategy.mask.enabled=false"],
    "no gate": ["strategy.kd.gate=false"],
    "lambda=0.5": ["strategy.mask.lam=0.5"],
    "lambda=2": ["strategy.mask.lam=2.0"],
    "lambda=4": ["strategy.mask.lam=4.0"],
    "probe n=16": ["strategy.probe.n=16"],
    "probe n=1024": ["strategy.probe.n=1024"],
    "uniform noise": ["strategy.probe.kind=uniform"],
    "synthetic query inputs": ["strategy.synthesis.per_class=200"],
    "logit-standardised KD": ["strategy.kd.standardize=true"],
}
ACC = ("query_acc", "local_acc", "overall_acc", "mean_acc")


def _qkt_bytes(res: dict) -> int:
    steps = ("probe", "weights", "qkt")
    return sum(res["bytes"]["sent"].get(s, 0) + res["bytes"]["received"].get(s, 0) for s in steps)


def method_rows(res: dict) -> list[dict]:
    """One row per method of one Flower run: accuracies (%), bytes beyond local training, seconds."""
    m, b, sec = res["metrics"], res.get("baselines", {}), res["seconds"]

    def acc(prefix: str, source: dict | None = None) -> dict:
        if source is not None:
            return {k: 100 * source[k] for k in ACC}
        return {k: 100 * m[f"{prefix}.{k}"] for k in ACC}

    rows = [
        {"method": "local model", **acc("before"), "bytes": 0, "seconds": 0.0, "rounds": 0},
        {"method": "QKT", **acc("after"), "bytes": _qkt_bytes(res),
         "seconds": sum(sec.get(s, 0.0) for s in ("probe", "weights", "qkt")), "rounds": 1},
    ]  # fmt: skip
    if "control.query_acc" in m:
        rows.insert(1, {"method": "balanced-CE control", **acc("control"), "bytes": 0, "seconds": 0.0, "rounds": 0})
    one = b.get("one_round", {})
    shared = res["bytes"]["received"].get("baselines.weights", 0) + res["bytes"]["sent"].get("baselines", 0)
    names = {"ensemble": "ensemble (all models)", "vanilla_kd": "vanilla KD (all teachers)", "feddf": "FedDF fusion"}
    for key, label in names.items():
        if key in one:
            rows.append({"method": label, **acc("", one[key]), "bytes": shared, "seconds": one[key]["seconds"],
                         "rounds": 1})  # fmt: skip
    for key, label in (("fedavg", "FedAvg"), ("fedprox", "FedProx")):
        if key not in b:
            continue
        for rnd, r in sorted(b[key]["rounds"].items(), key=lambda kv: int(kv[0])):
            n = int(rnd)
            per_round = b[key]["seconds"] / max(int(max(b[key]["rounds"], key=int)), 1)
            rows.append({"method": f"{label} ({n} rd)", **acc("", r["global"]), "bytes": r["bytes"],
                         "seconds": per_round * n, "rounds": n})  # fmt: skip
            if "finetuned" in r:
                rows.append({"method": f"{label} ({n} rd) + FT", **acc("", r["finetuned"]), "bytes": r["bytes"],
                             "seconds": per_round * n, "rounds": n})  # fmt: skip
    return rows


def aggregate(rows: list[dict], keys: tuple[str, ...]) -> list[dict]:
    """Mean ± std of every numeric column, grouped by ``keys`` (order of first appearance kept)."""
    groups: dict[tuple, list[dict]] = {}
    for row in rows:
        groups.setdefault(tuple(row[k] for k in keys), []).append(row)
    out = []
    for key, members in groups.items():
        agg = dict(zip(keys, key, strict=True))
        agg["runs"] = len(members)
        for col in (*ACC, "bytes", "seconds"):
            agg[col], agg[f"{col}_std"] = mean_std([r[col] for r in members])
        out.append(agg)
    return out


def markdown(table: list[dict], title: str, reference: str = "local model") -> str:
    """A Markdown table with gaps to the QKT row and the local model's local accuracy."""
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


def run_flower(overrides: list[str], out: Path) -> dict:
    """One Flower simulation (QKT + every baseline), reusing a finished run's results."""
    from qkt_flower.fl.simulation import simulate

    if not (out / "results.json").is_file():
        dcfg = compose_config(overrides)
        simulate(to_config(dcfg), OmegaConf.to_yaml(dcfg, resolve=True), out)
    return load_results(out)


def run_ablation(overrides: list[str], out: Path) -> dict:
    """One reference run (local models cached under ``out/../cache``)."""
    from qkt_flower.reference import run_reference
    from qkt_flower.results import save_results

    if not (out / "results.json").is_file():
        dcfg = compose_config(overrides)
        save_results(out, run_reference(to_config(dcfg)), dcfg)
    return load_results(out)


def ablation_row(abl: dict, dataset: str, seed: int, name: str) -> dict:
    """One ablation run as a table row (bytes: the experts' weights it fetched)."""
    return {
        "dataset": dataset, "query": 1, "seed": seed, "method": name,
        **{k: 100 * abl["after"][k] for k in ACC},
        "bytes": abl["bytes"]["expert_weights"],
        "seconds": sum(v for k, v in abl["seconds"].items() if k.startswith("query_")),
        "mask_precision": abl["probe"]["quality"]["precision"], "mask_recall": abl["probe"]["quality"]["recall"],
    }  # fmt: skip


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--preset", choices=sorted(PRESETS), default="quick")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--datasets", nargs="+", help="override the preset's datasets")
    parser.add_argument("--no-ablations", action="store_true")
    parser.add_argument("--extra", nargs="*", default=[], help="Hydra overrides for every run (after the preset's)")
    parser.add_argument("--out", type=Path, help="default: outputs/paper_table/<preset>")
    args = parser.parse_args(argv)
    preset = PRESETS[args.preset]
    out = args.out or Path("outputs/paper_table") / args.preset
    out.mkdir(parents=True, exist_ok=True)
    datasets = args.datasets or preset["datasets"]
    start = time.perf_counter()
    reused = sum(len(list((out / sub).glob("*/results.json"))) for sub in ("runs", "ablations"))
    rows, ablation_rows = [], []
    jobs = [(d, q, s) for d in datasets for q in QUERIES for s in args.seeds]
    try:
        for dataset, query, seed in tqdm(jobs, desc="paper table", unit="run"):
            base = [f"dataset={dataset}", f"model={MODELS[dataset]}", f"query={query}", f"seed={seed}",
                    "progress=false", f"local.cache_dir={out / 'cache'}", *preset["overrides"],
                    *args.extra]  # fmt: skip
            res = run_flower([*base, "baselines=all"], out / "runs" / f"{dataset}-{query}-seed{seed}")
            for row in method_rows(res):
                rows.append({"dataset": dataset, "query": QUERIES[query], "seed": seed, **row})
            if args.no_ablations or query != "single":
                continue
            for name, extra in ABLATIONS.items():
                if name in preset.get("skip_ablations", ()):
                    continue
                slug = name.replace(" ", "_").replace("=", "").replace("(", "").replace(")", "")
                abl = run_ablation([*base, "strategy.control=false", *extra],
                                   out / "ablations" / f"{dataset}-seed{seed}-{slug}")  # fmt: skip
                ablation_rows.append(ablation_row(abl, dataset, seed, name))
    except (ConfigError, DataNotFoundError) as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)

    table = aggregate(rows, ("dataset", "query", "method"))
    ablations = aggregate(ablation_rows, ("dataset", "query", "method"))
    report = []
    for dataset in datasets:
        for q in QUERIES.values():
            part = [r for r in table if r["dataset"] == dataset and r["query"] == q]
            report.append(markdown(part, f"{dataset}, {q}-class query, seeds {args.seeds}"))
        part = [r for r in ablations if r["dataset"] == dataset]
        if part:
            report.append(markdown(part, f"{dataset} ablations (reference runner), 1-class query", "QKT (default)"))
    minutes = (time.perf_counter() - start) / 60
    text = "\n\n".join(report) + f"\n\n{len(jobs)} Flower runs, {minutes:.1f} min ({reused} finished runs reused).\n"
    print(text)
    (out / "table.md").write_text(text)
    summary = {"preset": args.preset, "seeds": args.seeds, "minutes": minutes, "table": table,
               "ablations": ablations, "rows": rows, "ablation_rows": ablation_rows}  # fmt: skip
    (out / "table.json").write_text(json.dumps(summary, indent=1))
    for name, data in (("table.csv", table), ("ablations.csv", ablations)):
        if data:
            write_csv(out / name, data)
    print(f"written: {out}/table.md, table.json, table.csv, ablations.csv")


if __name__ == "__main__":
    main()
