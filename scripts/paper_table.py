"""The paper table: QKT vs every baseline, same harness, same partitions/models/seeds/test view.

One Flower simulation per (dataset, query size, seed) runs QKT and then every baseline (``baselines=all``); the
ablations (the ``ablations`` list of ``conf/variants.yaml``) run with the reference runner on the single-class
query, local models cached (``qkt_flower.experiments.paper``).

    python scripts/paper_table.py --preset quick            # Fashion-MNIST, 300 images/class, 2 CPU cores
    python scripts/paper_table.py --preset full              # full data, 50 rounds: a GPU machine

Prints Markdown tables (mean ± std over seeds) and writes ``table.md``, ``table.csv``, ``table.json``,
``ablations.csv`` and every run's ``results.json`` under ``--out`` (default ``outputs/paper_table/<preset>``).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from omegaconf import OmegaConf
from tqdm.auto import tqdm

from qkt_flower.config import compose_config, load_config, to_config
from qkt_flower.errors import ConfigError, DataError
from qkt_flower.experiments import paper
from qkt_flower.results import load_results, save_results, write_csv


def run_flower(overrides: list[str], out: Path) -> dict:
    """One Flower simulation (QKT + every baseline), reusing a finished run's results."""
    from qkt_flower.fl.simulation import simulate

    if not (out / "results.json").is_file():
        dcfg = compose_config(overrides)
        simulate(to_config(dcfg), OmegaConf.to_yaml(dcfg, resolve=True), out)
    return load_results(out)


def run_ablation(overrides: list[str], out: Path) -> dict:
    """One reference run, reusing a finished run's results."""
    from qkt_flower.reference import run_reference

    if not (out / "results.json").is_file():
        dcfg = compose_config(overrides)
        save_results(out, run_reference(to_config(dcfg)), dcfg)
    return load_results(out)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--preset", choices=sorted(paper.PRESETS), default="quick")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--datasets", nargs="+", choices=sorted(paper.MODELS), help="override the preset's datasets")
    parser.add_argument("--no-ablations", action="store_true")
    parser.add_argument("--extra", nargs="*", default=[], help="Hydra overrides for every run (after the preset's)")
    parser.add_argument("--out", type=Path, help="default: outputs/paper_table/<preset>")
    args = parser.parse_args(argv)
    out = args.out or Path("outputs/paper_table") / args.preset
    datasets = args.datasets or paper.PRESETS[args.preset]["datasets"]
    start = time.perf_counter()
    reused = sum(len(list((out / sub).glob("*/results.json"))) for sub in ("runs", "ablations"))
    rows, ablation_rows = [], []
    jobs = [(d, q, s) for d in datasets for q in paper.QUERIES for s in args.seeds]
    try:
        ablations = {} if args.no_ablations else paper.ablations(args.preset)
        for dataset in datasets:  # a bad --extra is refused here, before any run starts
            for query in paper.QUERIES:
                load_config(paper.run_overrides(dataset, query, args.seeds[0], out / "cache", args.preset, args.extra))
        out.mkdir(parents=True, exist_ok=True)
        for dataset, query, seed in tqdm(jobs, desc="paper table", unit="run"):
            base = paper.run_overrides(dataset, query, seed, out / "cache", args.preset, args.extra)
            res = run_flower([*base, "baselines=all"], out / "runs" / f"{dataset}-{query}-seed{seed}")
            rows += [{"dataset": dataset, "query": paper.QUERIES[query], "seed": seed, **r}
                     for r in paper.method_rows(res)]  # fmt: skip
            if query != "single":
                continue
            for name, extra in ablations.items():
                abl = run_ablation([*base, "control=false", *extra],
                                   out / "ablations" / f"{dataset}-seed{seed}-{paper.slug(name)}")  # fmt: skip
                ablation_rows.append(paper.ablation_row(abl, dataset, seed, name))
    except (ConfigError, DataError) as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)

    table = paper.aggregate(rows, ("dataset", "query", "method"))
    ablation_table = paper.aggregate(ablation_rows, ("dataset", "query", "method"))
    minutes = (time.perf_counter() - start) / 60
    text = paper.report(table, ablation_table, datasets, args.seeds)
    text += f"\n\n{len(jobs)} Flower runs, {minutes:.1f} min ({reused} finished runs reused).\n"
    print(text)
    (out / "table.md").write_text(text)
    summary = {"preset": args.preset, "seeds": args.seeds, "minutes": minutes, "table": table,
               "ablations": ablation_table, "rows": rows, "ablation_rows": ablation_rows}  # fmt: skip
    (out / "table.json").write_text(json.dumps(summary, indent=1))
    for name, data in (("table.csv", table), ("ablations.csv", ablation_table)):
        if data:
            write_csv(out / name, data)
    print(f"written: {out}/table.md, table.json, table.csv, ablations.csv")


if __name__ == "__main__":
    main()
