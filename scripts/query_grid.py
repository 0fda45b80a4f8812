"""The interference grid: QKT variants vs controls over seeds x query classes x splits (reference runner).

One lucky query proves nothing: this runs every (partition, seed, query) cell, trains the local models
once per cell (cached under ``--out/cache``), and evaluates each method on the querying client's test
view. The default queries are Fashion-MNIST's look-alike group (T-shirt 0, pullover 2, coat 4,
shirt 6): a query class is cut to ``query.shots`` images at the querying client, so its local classes
include the look-alikes — the hard case of ``shared/QKT.md``.

    python scripts/query_grid.py                                   # pathological + Dirichlet, 3 seeds, 4 queries
    python scripts/query_grid.py --queries "[0,2,4]" "[2,4,6]" "[0,4,6]"   # 3-class queries
    python scripts/query_grid.py --extra query.shots=0             # the 0-shot stress test
    python scripts/query_grid.py --variants "QKT (default)" --federated fedavg fedprox --rounds 20

Methods: the QKT variants and balanced-CE controls of ``GRID`` (any of ``VARIANTS`` with ``--variants``),
then the baselines — ensemble, vanilla KD and FedDF from every teacher, FedAvg (and FedProx with
``--federated``) after 1 and ``--rounds`` rounds, each also fine-tuned on the querying client with
the control's recipe. Baseline rows and federated global models are cached per cell under
``--out/cache``: a new QKT variant re-uses them.

Prints mean ± std of query, local, Δlocal (vs the local model), overall and mean(query, local) per
method, and under each table a claim check of the ``--check`` rows (best mean(q,l) of all methods;
local accuracy within 2 points; query accuracy ≥ 20 points — 14 for 3-class queries — above every
non-QKT method that keeps local accuracy within 2 points), and writes ``rows.jsonl`` (cell by cell),
``grid.md`` / ``grid.json`` / ``grid.csv`` under ``--out`` (default ``outputs/query_grid``).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from tqdm.auto import tqdm

from qkt_flower import workflow as wf
from qkt_flower.baselines import averaging, distill, ensemble, proximal
from qkt_flower.config import CONF_DIR, load_config
from qkt_flower.data.federation import build_federation
from qkt_flower.errors import ConfigError, DataNotFoundError
from qkt_flower.qkt import calibrate, evaluate, phases
from qkt_flower.qkt.evaluate import evaluate_view
from qkt_flower.results import mean_std, write_csv

BASELINE_CODE = (averaging, distill, ensemble, proximal, calibrate, evaluate, phases, wf.one_round_baseline,
                 wf.control_model)  # fmt: skip
"""The code behind the cached baseline rows (with the local models' and the FedAvg globals' own keys)."""
CAL = "strategy.calibration."
NO_JIT = "strategy.augment_local=0"
JIT = "strategy.augment_local=1"
OWN_CAL = [NO_JIT, CAL + "augment=0"]  # calibration on the client's own images, no jittered local copies (< session 24)
J5 = [NO_JIT, CAL + "augment=4"]  # calibration 5 % on jittered copies, no jittered local images
L5 = [JIT, CAL + "augment=4"]  # ... with jittered local images (today's default, spelled out)
AT_10 = CAL + "max_false_query=0.1"
NO_AUG = ["strategy.augment_shots=0", *OWN_CAL]  # no jitter anywhere: shots, local images, calibration
TWO = "strategy.mode=two-phase"
FIXED_EPOCH = ["strategy.phase1.epoch_samples=320", "strategy.phase2.epoch_samples=320"]  # today's default
DATA_EPOCH = ["strategy.phase1.epoch_samples=null", "strategy.phase2.epoch_samples=null"]  # one pass over q's data
VARIANTS = {  # name -> overrides on top of the defaults ("control" / baselines are handled apart)
    # joint phase + augmented shots + consistent KD + 320 samples per epoch (chosen on the data-size grid,
    # results/query_grid_data_size.md) + jittered local images and calibration 5 % on jittered copies (the one
    # recipe that keeps local within 2 points on 2- and 10-epoch local models, results/query_grid_one_recipe.md)
    "QKT (default)": [],
    "QKT, calibration 5 % on own images (previous default)": OWN_CAL,
    "QKT, two phases (previous default)": [TWO, CAL + "max_false_query=0.02", *DATA_EPOCH, *OWN_CAL],
    "QKT, two phases, calibration 5 %": [TWO],
    "QKT, paper recipe (two phases, no augmentation, no consistent KD)": [  # the paper's epochs: passes over the data
        TWO,
        *NO_AUG,
        "strategy.kd.consistent=false",
        CAL + "max_false_query=0.02",
        *DATA_EPOCH,
    ],
    "QKT, 320 samples per epoch": FIXED_EPOCH,  # = today's default, by name (the data-size grid's rows use it)
    "QKT, epochs over the transfer set (previous default)": [*DATA_EPOCH, *OWN_CAL],  # steps grow with the data
    "QKT, no augmentation": NO_AUG,
    "QKT, no consistent KD": ["strategy.kd.consistent=false"],
    "QKT, no calibration": [CAL + "max_false_query=null"],
    "QKT, calibration 2 %": [CAL + "max_false_query=0.02"],
    "QKT, calibration on 20 % hold-out": [CAL + "holdout=0.2"],
    "QKT, calibration 2 % on 20 % hold-out": [CAL + "max_false_query=0.02", CAL + "holdout=0.2"],
    "QKT, calibration 5 % on jittered copies": J5,
    "QKT, calibration 10 % on jittered copies": [*J5, AT_10],
    "QKT, jittered local images": [JIT, CAL + "augment=0"],
    "QKT, jittered local images, calibration 5 % on jittered copies": L5,
    "QKT, jittered local images, calibration 10 % on jittered copies": [*L5, AT_10],
    "QKT, no L_keep": ["strategy.phase2.gamma=0"],
    "QKT, balanced L_keep": ["strategy.kd.keep_balanced=true"],
    "QKT, consistent L_keep": ["strategy.kd.keep_consistent=true"],
    "QKT, half L_keep (γ = 0.5)": ["strategy.phase2.gamma=0.5"],
    "QKT, no query distillation (β = 0)": ["strategy.phase1.beta=0"],  # CE + L_keep only: no teacher at all
    "QKT, half query distillation (β = 0.5)": ["strategy.phase1.beta=0.5"],
    "QKT, stricter mask (λ = 2)": ["strategy.mask.lam=2.0"],
    "QKT, shot-weighted experts": ["strategy.kd.weighting=shots"],
    "QKT, expert-labelled mixes": ["strategy.mix.weight=1.0"],
    "QKT, relational feature KD (β_rel = 10)": ["strategy.relation.weight=10.0"],
    "QKT, relational feature KD (β_rel = 30)": ["strategy.relation.weight=30.0"],
    "QKT, balance every present class": [
        "strategy.phase1.balance_over=present",
        "strategy.phase2.balance_over=present",
    ],
    "QKT Light": ["strategy.mode=light"],
    # the control trains for QKT's whole-network epochs (joint: phase 1's + phase 2's; two phases: phase 1's)
    "balanced-CE control": [],  # QKT's default recipe (jitter, calibration) and budget (7 epochs of 320 draws)
    "balanced-CE control, calibration 5 % on own images (previous default)": OWN_CAL,
    "balanced-CE control, no calibration": [CAL + "max_false_query=null"],
    "balanced-CE control, calibration 2 %": [CAL + "max_false_query=0.02"],
    "balanced-CE control, calibration on 20 % hold-out": [CAL + "holdout=0.2"],
    "balanced-CE control, calibration 5 % on jittered copies": J5,
    "balanced-CE control, calibration 10 % on jittered copies": [*J5, AT_10],
    "balanced-CE control, jittered local images, calibration 5 % on jittered copies": L5,
    "balanced-CE control, jittered local images, calibration 10 % on jittered copies": [*L5, AT_10],
    "balanced-CE control, previous recipe (2 epochs, calibration 2 %)": [
        TWO,
        CAL + "max_false_query=0.02",
        *DATA_EPOCH,
        *OWN_CAL,
    ],
    "balanced-CE control, no augmentation": NO_AUG,
    "balanced-CE control, 320 samples per epoch": FIXED_EPOCH,
    "balanced-CE control, epochs over the transfer set": DATA_EPOCH,
    "balanced-CE control, no augmentation, no calibration": [*NO_AUG, CAL + "max_false_query=null"],
}
GRID = [  # what the default grid runs (every name of VARIANTS can be asked for with --variants)
    "QKT (default)",
    "QKT, two phases (previous default)",
    "QKT, two phases, calibration 5 %",
    "QKT, paper recipe (two phases, no augmentation, no consistent KD)",
    "QKT, epochs over the transfer set (previous default)",
    "QKT, no augmentation",
    "QKT, no consistent KD",
    "QKT, no calibration",
    "QKT, calibration 2 %",
    "QKT, no L_keep",
    "QKT, no query distillation (β = 0)",
    "QKT, expert-labelled mixes",
    "QKT Light",
    "balanced-CE control",
    "balanced-CE control, no calibration",
    "balanced-CE control, previous recipe (2 epochs, calibration 2 %)",
    "balanced-CE control, no augmentation",
]
ONE_ROUND = {"ensemble": "ensemble (all models)", "vanilla_kd": "vanilla KD", "feddf": "FedDF fusion"}
ACC = ("query_acc", "local_acc", "overall_acc", "mean_acc")


@dataclass(frozen=True)
class Baselines:
    """Which non-QKT methods a cell runs, and where their rows are cached (they do not depend on QKT's config)."""

    federated: tuple[str, ...] = ("fedavg",)
    rounds: int = 20
    cache: Path | None = None


def _key(parts: list) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:16]


def global_models(cfg, fed, name: str, b: Baselines, device) -> dict:
    """FedAvg / FedProx global models after 1 and ``b.rounds`` rounds, cached as state dicts.

    They depend on the data, partition, query cut, model, seed and round budget only, so a new
    fine-tuning recipe (e.g. augmented shots in the control) re-uses them instead of re-training.
    """
    mu = cfg.baselines.fedprox_mu if name == "fedprox" else 0.0
    code = wf.code_fingerprint(wf.federated_round, wf.federated_baseline, wf.initial_global_model, averaging)
    key = _key([wf.local_model_key(cfg), name, mu, cfg.baselines.epochs_per_round, b.rounds, code])
    path = b.cache / f"{name}-{key}.pt" if b.cache is not None else None
    if path is not None and path.exists():
        states = torch.load(path, map_location="cpu")
    else:
        trained = wf.federated_baseline(cfg, fed, mu, b.rounds, {1, b.rounds}, device)
        states = {r: {k: v.cpu() for k, v in m.state_dict().items()} for r, m in trained.items()}
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
            torch.save(states, path)
    models = {}
    for rounds, state in sorted(states.items()):
        model = wf.initial_global_model(cfg, fed.train.input_shape, fed.train.num_classes)
        model.load_state_dict(state)
        models[rounds] = model.to(device).eval()
    return models


def baseline_rows(cfg, fed, models, row, b: Baselines, device) -> list[dict]:
    """The non-QKT methods of one cell: one-round baselines, then federated ones ± fine-tuning.

    Ensemble / vanilla KD / FedDF from every teacher; FedAvg / FedProx after 1 and ``b.rounds`` rounds,
    each also fine-tuned on the querying client (the balanced-CE control's recipe and budget, calibration included).

    Cached per cell: re-running the grid for a new QKT variant does not re-train 10 clients for rounds.
    """
    shaping = [wf.local_model_key(cfg), cfg.strategy.mode, asdict(cfg.strategy.phase1), cfg.strategy.phase2.epochs,
               asdict(cfg.strategy.calibration), cfg.strategy.kd.temperature, asdict(cfg.baselines),
               list(b.federated), b.rounds, wf.code_fingerprint(*BASELINE_CODE)]  # fmt: skip
    if cfg.strategy.augment_shots:  # the fine-tuned baselines use the control's recipe, augmentation included
        shaping.append(cfg.strategy.augment_shots)
    if cfg.strategy.augment_local:
        shaping.append(("augment_local", cfg.strategy.augment_local))
    key = _key(shaping)
    cached = b.cache / f"baselines-{key}.json" if b.cache is not None else None
    if cached is not None and cached.exists():
        return json.loads(cached.read_text())
    s = fed.scenario
    teachers = {k: m for k, m in models.items() if k != s.client}
    sizes = {k: len(s.partitions[k]) for k in models}
    rows = [row(label, wf.one_round_baseline(cfg, fed, key_, models[s.client], teachers, sizes, device))
            for key_, label in ONE_ROUND.items()]  # fmt: skip
    for name in b.federated:
        label = {"fedavg": "FedAvg", "fedprox": "FedProx"}[name]
        for rounds, model in global_models(cfg, fed, name, b, device).items():
            rows.append(row(f"{label} ({rounds} rd)", model))
            rows.append(row(f"{label} ({rounds} rd) + FT", wf.control_model(cfg, fed, model, device)))
    if cached is not None:
        cached.parent.mkdir(parents=True, exist_ok=True)
        cached.write_text(json.dumps(rows))
    return rows


def run_cell(overrides: list[str], device, baselines: Baselines | None, variants: dict = VARIANTS) -> list[dict]:
    """Every method on one (partition, seed, query) cell; rows in percent."""
    cfg = load_config(overrides)
    torch.manual_seed(cfg.seed)
    fed = build_federation(cfg)
    s = fed.scenario
    models = {k: wf.train_client(cfg, fed, k, device) for k in range(fed.num_clients)}
    teachers = {k: m for k, m in models.items() if k != s.client}
    scores = {k: wf.answer_probe(cfg, m, fed.train.input_shape, device) for k, m in teachers.items()}
    view = fed.test_view()

    def row(method: str, model) -> dict:
        r = evaluate_view(model, view, s.query_classes, s.local_classes, device=device)
        return {"method": method, **{k: 100 * r[k] for k in ACC}}

    rows = [row("local model", models[s.client])]
    for name, extra in variants.items():
        vcfg = load_config([*overrides, *extra])
        if name.startswith("balanced-CE control"):
            model = wf.control_model(vcfg, fed, models[s.client], device)
        else:
            masks, selection = wf.choose_experts(vcfg, scores, s.query_classes)
            model, _ = wf.learn_query(vcfg, fed, models[s.client], wf.make_experts(models, masks, selection), device)
        rows.append(row(name, model))
    if baselines is not None:
        rows += baseline_rows(cfg, fed, models, row, baselines, device)
    for r in rows:
        r["local_delta"] = r["local_acc"] - rows[0]["local_acc"]
    return rows


def summarize(rows: list[dict], keys=("partition", "method")) -> list[dict]:
    """Mean ± std per (partition, method) over every (seed, query) cell."""
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
    header = "| method | query | local | Δlocal | overall | mean(q,l) |"
    lines = [f"**{title}**", "", header, "|---|---|---|---|---|---|"]
    for r in table:
        lines.append(
            f"| {r['method']} | {r['query_acc']:.1f} ± {r['query_acc_std']:.1f} | {r['local_acc']:.1f} ± "
            f"{r['local_acc_std']:.1f} | {r['local_delta']:+.1f} | {r['overall_acc']:.1f} | {r['mean_acc']:.1f} |"
        )
    return "\n".join(lines)


Condition = tuple[bool, str, str]  # (passed, the condition, its numbers)


def claim_conditions(table: list[dict], margin: float, qkt: str = "QKT (default)") -> list[Condition] | None:
    """The issue's three conditions for ``qkt`` against every non-QKT row: ``[(passed, condition, detail), ...]``.

    1. best mean(query, local) of all methods; 2. local accuracy within 2 points of the local model;
    3. query accuracy ≥ ``margin`` points above every non-QKT method that also keeps local within 2 points.
    ``None`` when the table has no ``qkt`` row.
    """
    ours = next((r for r in table if r["method"] == qkt), None)
    if ours is None:
        return None
    others = [r for r in table if not r["method"].startswith("QKT")]
    best_mean = max(others, key=lambda r: r["mean_acc"])
    kept = [r for r in others if r["local_delta"] >= -2.0]
    best_kept = max(kept, key=lambda r: r["query_acc"])
    gap = ours["query_acc"] - best_kept["query_acc"]
    return [
        (ours["mean_acc"] >= best_mean["mean_acc"], "best mean(q,l)",
         f"{ours['mean_acc']:.1f} vs {best_mean['mean_acc']:.1f} ({best_mean['method']})"),
        (ours["local_delta"] >= -2.0, "local within 2 points", f"{ours['local_delta']:+.1f}"),
        (gap >= margin, f"query ≥ {margin:g} points over the best method keeping local",
         f"{gap:+.1f} over {best_kept['method']} ({best_kept['query_acc']:.1f}, Δl {best_kept['local_delta']:+.1f})"),
    ]  # fmt: skip


def claim_check(table: list[dict], margin: float, qkt: str = "QKT (default)") -> str:
    """:func:`claim_conditions` as Markdown bullets, with the shortfall where one fails."""
    conditions = claim_conditions(table, margin, qkt)
    if conditions is None:
        return f"- (no {qkt!r} row: no claim check)"
    return "\n".join(f"- {'PASS' if ok else 'FAIL'}: {name}: {detail}" for ok, name, detail in conditions)


def margin_for(queries) -> float:
    """The paper's claim: ≥ 14 query points on multi-class queries, ≥ 20 on single-class ones."""
    return 14.0 if any("," in q for q in queries) else 20.0


def conf_fingerprint(conf_dir: Path = CONF_DIR) -> str:
    """Hash of every YAML file under ``conf/`` (names and contents).

    Every cell composes its config from ``conf/`` when it starts, so a default edited while a grid runs
    silently splits its rows between two sets of defaults (a frozen copy of this script does not freeze
    ``conf/``): the grid compares this fingerprint after every cell and stops when it changed.
    """
    h = hashlib.sha256()
    for path in sorted(conf_dir.rglob("*.yaml")):
        h.update(path.relative_to(conf_dir).as_posix().encode())
        h.update(path.read_bytes())
    return h.hexdigest()[:12]


def add_cell_arguments(parser: argparse.ArgumentParser) -> None:
    """The cells' arguments — splits, seeds, queries, overrides for every cell — shared with other grid scripts."""
    parser.add_argument("--partitions", nargs="+", default=["pathological", "dirichlet"])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--queries", nargs="+", default=["[0]", "[2]", "[4]", "[6]"])
    parser.add_argument("--extra", nargs="*", default=["dataset.train_per_class=300", "dataset.test_per_class=200"],
                        help="Hydra overrides for every cell (default: the quick preset's data)")  # fmt: skip


def cell_overrides(args: argparse.Namespace, part: str, seed: int, query: str) -> list[str]:
    """One cell's Hydra overrides; local models cached under ``args.out / "cache"``."""
    return [f"partition={part}", f"seed={seed}", f"query.classes={query}", "progress=false",
            f"local.cache_dir={args.out / 'cache'}", *args.extra]  # fmt: skip


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_cell_arguments(parser)
    parser.add_argument("--no-baselines", action="store_true", help="QKT variants and the control only")
    parser.add_argument(
        "--federated",
        nargs="*",
        default=["fedavg"],
        choices=["fedavg", "fedprox"],
        help="federated baselines (1 round and --rounds, each ± fine-tuning); none: skip",
    )
    parser.add_argument(
        "--check",
        nargs="+",
        default=["QKT (default)"],
        metavar="NAME",
        help="QKT rows to hold to the issue's claim (best mean, local band, query margin)",
    )
    parser.add_argument("--rounds", type=int, default=10, help="the federated baselines' converged budget")
    parser.add_argument("--variants", nargs="+", choices=list(VARIANTS), default=GRID, metavar="NAME",
                        help="QKT variants / controls to run (default: the GRID list)")  # fmt: skip
    parser.add_argument("--out", type=Path, default=Path("outputs/query_grid"))
    parser.add_argument("--from-rows", action="store_true",
                        help="run nothing: tables from --out/rows.jsonl (a stopped grid's cells)")  # fmt: skip
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    if args.from_rows:
        partial = args.out / "rows.jsonl"
        if not partial.is_file():
            print(f"error: {partial} not found (run the grid with --out {args.out} first)", file=sys.stderr)
            sys.exit(2)
        rows = [json.loads(line) for line in partial.read_text().splitlines() if line.strip()]
        n = len({(r["partition"], r["seed"], r["query"]) for r in rows})
        report(args, rows, [], f"{n} finished cells of a stopped or running grid (from rows.jsonl).")
        return
    device = wf.resolve_device("auto")
    start = time.perf_counter()
    rows, skipped = [], []
    baselines = None if args.no_baselines else Baselines(tuple(args.federated), args.rounds, args.out / "cache")
    cells = [(p, s, q) for p in args.partitions for s in args.seeds for q in args.queries]
    partial = args.out / "rows.jsonl"  # every finished cell's rows, as they come: a stopped grid keeps them
    partial.write_text("")
    conf = conf_fingerprint()
    for done, (part, seed, query) in enumerate(tqdm(cells, desc="query grid", unit="cell"), 1):
        overrides = cell_overrides(args, part, seed, query)
        try:
            cell = run_cell(overrides, device, baselines, {v: VARIANTS[v] for v in args.variants})
        except ConfigError as err:  # e.g. a query class nobody else holds under this seed: skip the cell
            skipped.append({"partition": part, "seed": seed, "query": query, "why": str(err)})
            continue
        except DataNotFoundError as err:
            print(f"error: {err}", file=sys.stderr)
            sys.exit(2)
        new = [{"partition": part, "seed": seed, "query": query, **r} for r in cell]
        with partial.open("a") as f:
            f.writelines(json.dumps(r) + "\n" for r in new)
        rows += new
        if conf_fingerprint() != conf:
            print(f"error: conf/ changed while the grid ran (after cell {done} of {len(cells)}): the next cells "
                  f"would use other defaults. The finished cells are in {partial} (--from-rows tables them); undo the "
                  "edit and re-run, or re-run the grid on the new defaults.",
                  file=sys.stderr)  # fmt: skip
            sys.exit(2)
    minutes = (time.perf_counter() - start) / 60
    report(args, rows, skipped, f"{len(cells) - len(skipped)} cells ({len(skipped)} skipped), {minutes:.1f} min.",
           minutes)  # fmt: skip


def report(args, rows: list[dict], skipped: list[dict], footer: str, minutes: float | None = None) -> None:
    """Tables + claim checks per split, printed and written as grid.md / grid.json / grid.csv."""
    table = summarize(rows)
    margin = margin_for(r["query"] for r in rows)
    parts = []
    for p in args.partitions:
        part = [r for r in table if r["partition"] == p]
        if part:
            seeds = sorted({r["seed"] for r in rows if r["partition"] == p})
            queries = list(dict.fromkeys(r["query"] for r in rows if r["partition"] == p))
            checks = "\n\n".join(f"Claim check, {name}:\n" + claim_check(part, margin, name) for name in args.check)
            parts.append(markdown(part, f"{p}: seeds {seeds} x queries {queries}") + "\n\n" + checks)
    text = "\n\n".join(parts) + f"\n\n{footer}\n"
    print(text)
    (args.out / "grid.md").write_text(text)
    (args.out / "grid.json").write_text(json.dumps({"table": table, "rows": rows, "skipped": skipped,
                                                    "minutes": minutes, "argv": sys.argv[1:]}, indent=1))  # fmt: skip
    write_csv(args.out / "grid.csv", table)
    print(f"written: {args.out}/grid.md, grid.json, grid.csv")


if __name__ == "__main__":
    main()
