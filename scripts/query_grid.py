"""The interference grid: named variants vs baselines over seeds x query classes x splits (in-process pipeline).

The default queries are Fashion-MNIST's look-alike group (T-shirt 0, pullover 2, coat 4, shirt 6): a query class
is cut to ``query.shots`` images at the querying client, whose local classes then include the look-alikes.

    python scripts/query_grid.py                                        # pathological + Dirichlet, 3 seeds, 4 queries
    python scripts/query_grid.py --queries "[0,2,4]" "[2,4,6]" "[0,4,6]"  # 3-class queries
    python scripts/query_grid.py --variants "QKT (default)" "balanced-CE control" --no-baselines

Variants are names from ``conf/variants.yaml`` (default: its ``grid`` list). Prints mean ± std per method and the
claim check of the ``--check`` rows; writes ``rows.jsonl`` (cell by cell), ``grid.md`` / ``grid.json`` /
``grid.csv`` under ``--out`` (default ``outputs/query_grid``).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from tqdm.auto import tqdm

from qkt_flower.errors import ConfigError, DataError
from qkt_flower.experiments.grid import Baselines, add_cell_arguments, cell_overrides, conf_fingerprint, run_cell
from qkt_flower.experiments.tables import report
from qkt_flower.experiments.variants import load_variants, pick
from qkt_flower.results import write_csv


def arguments(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_cell_arguments(p)
    p.add_argument("--variants", nargs="+", metavar="NAME", help="names from conf/variants.yaml (default: its grid)")
    p.add_argument("--no-baselines", action="store_true", help="variants only")
    p.add_argument("--oracle", action="store_true", help="add the pooled-data oracle row (a reference, not a method)")
    p.add_argument("--federated", nargs="*", default=["fedavg"], choices=["fedavg", "fedprox"])
    p.add_argument("--rounds", type=int, default=10, help="the federated baselines' converged budget")
    p.add_argument("--check", nargs="+", default=["QKT (default)"], metavar="NAME", help="rows held to the claim")
    p.add_argument("--out", type=Path, default=Path("outputs/query_grid"))
    p.add_argument("--from-rows", action="store_true", help="run nothing: tables from --out/rows.jsonl")
    return p.parse_args(argv)


def fail(message: str) -> None:
    print(f"error: {message}", file=sys.stderr)
    sys.exit(2)


def main(argv: list[str] | None = None) -> None:
    args = arguments(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    partial = args.out / "rows.jsonl"  # every finished cell's rows, as they come: a stopped grid keeps them
    if args.from_rows:
        if not partial.is_file():
            fail(f"{partial} not found (run the grid with --out {args.out} first)")
        rows = [json.loads(line) for line in partial.read_text().splitlines() if line.strip()]
        n = len({(r["partition"], r["seed"], r["query"]) for r in rows})
        return write(args, rows, [], f"{n} finished cells of a stopped or running grid (from rows.jsonl).")
    try:
        all_variants, lists = load_variants()
        variants = pick(all_variants, args.variants or lists["grid"])
    except ConfigError as err:
        fail(str(err))
    baselines = None if args.no_baselines else Baselines(tuple(args.federated), args.rounds, args.out / "cache")
    cells = [(p, s, q) for p in args.partitions for s in args.seeds for q in args.queries]
    start, rows, skipped, conf = time.perf_counter(), [], [], conf_fingerprint()
    partial.write_text("")
    for done, (part, seed, query) in enumerate(tqdm(cells, desc="query grid", unit="cell"), 1):
        try:
            overrides = cell_overrides(part, seed, query, args.out / "cache", args.extra)
            cell = run_cell(overrides, variants, baselines, oracle=args.oracle)
        except ConfigError as err:  # e.g. a query class nobody else holds under this seed: skip the cell
            skipped.append({"partition": part, "seed": seed, "query": query, "why": str(err)})
            continue
        except DataError as err:
            fail(str(err))
        new = [{"partition": part, "seed": seed, "query": query, **r} for r in cell]
        with partial.open("a") as f:
            f.writelines(json.dumps(r) + "\n" for r in new)
        rows += new
        if conf_fingerprint() != conf:
            fail(f"conf/ changed while the grid ran (after cell {done} of {len(cells)}): the next cells would use "
                 f"other defaults. The finished cells are in {partial} (--from-rows tables them).")  # fmt: skip
    minutes = (time.perf_counter() - start) / 60
    write(args, rows, skipped, f"{len(cells) - len(skipped)} cells ({len(skipped)} skipped), {minutes:.1f} min.",
          minutes)  # fmt: skip


def write(args, rows: list[dict], skipped: list[dict], footer: str, minutes: float | None = None) -> None:
    if not rows:
        fail(f"no cell finished ({len(skipped)} skipped: {skipped[:1]})")
    text, table = report(rows, args.partitions, args.check)
    text += f"\n\n{footer}\n"
    print(text)
    (args.out / "grid.md").write_text(text)
    (args.out / "grid.json").write_text(json.dumps({"table": table, "rows": rows, "skipped": skipped,
                                                    "minutes": minutes, "argv": sys.argv[1:]}, indent=1))  # fmt: skip
    write_csv(args.out / "grid.csv", table)
    print(f"written: {args.out}/grid.md, grid.json, grid.csv")


if __name__ == "__main__":
    main()
