"""How much can *any* query-bias calibration give? Rules compared on the same trained models, with a test oracle.

Every cell trains QKT and the balanced-CE control once without calibration, then applies each rule of
``qkt_flower.experiments.frontier.RULES`` post hoc (the default rule reproduces the grid's calibrated rows; the
test oracle bounds what any single shift can buy inside the local band).

    python scripts/calibration_frontier.py --extra dataset.train_per_class=300 dataset.test_per_class=200 \
        local.epochs=10 --out outputs/frontier_p10
    python scripts/calibration_frontier.py --queries "[0,2,4]" "[2,4,6]" "[0,4,6]" --out outputs/frontier_multi

Prints mean query / local / Δlocal / worst-cell Δlocal per (split, method, rule); writes ``frontier.md``,
``frontier.json`` and ``rows.jsonl`` (cell by cell) under ``--out``. Local models are cached under
``--out/cache`` (copy a query grid's cache there to reuse its local models).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from tqdm.auto import tqdm

from qkt_flower.config import load_config
from qkt_flower.errors import ConfigError, DataError
from qkt_flower.experiments import frontier
from qkt_flower.experiments.grid import add_cell_arguments, cell_overrides


def fail(message: str) -> None:
    print(f"error: {message}", file=sys.stderr)
    sys.exit(2)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_cell_arguments(parser)
    parser.add_argument("--out", type=Path, default=Path("outputs/calibration_frontier"))
    args = parser.parse_args(argv)
    try:
        frontier.budget(load_config(args.extra))  # refused here, before any cell trains
    except ConfigError as err:
        fail(str(err))
    args.out.mkdir(parents=True, exist_ok=True)
    start, rows = time.perf_counter(), []
    partial = args.out / "rows.jsonl"  # every finished cell's rows, as they come
    partial.write_text("")
    cells = [(p, s, q) for p in args.partitions for s in args.seeds for q in args.queries]
    for part, seed, query in tqdm(cells, desc="calibration frontier", unit="cell"):
        try:
            trained = frontier.trained_cells(cell_overrides(part, seed, query, args.out / "cache", args.extra))
        except ConfigError as err:  # e.g. a query class nobody else holds under this seed: skip the cell
            print(f"skipped {part} seed {seed} {query}: {err}", file=sys.stderr)
            continue
        except DataError as err:
            fail(str(err))
        new = [{"partition": part, "seed": seed, "query": query, **r} for r in frontier.cell_rows(trained)]
        with partial.open("a") as f:
            f.writelines(json.dumps(r) + "\n" for r in new)
        rows += new
    if not rows:
        fail(f"no cell finished out of {len(cells)}")
    minutes = (time.perf_counter() - start) / 60
    table = frontier.summarize(rows)
    text = frontier.markdown(table) + f"\n{len(rows) // (2 * len(frontier.RULES))} cells, {minutes:.1f} min.\n"
    print(text)
    (args.out / "frontier.md").write_text(text)
    record = {"table": table, "rows": rows, "minutes": minutes, "argv": sys.argv[1:] if argv is None else argv}
    (args.out / "frontier.json").write_text(json.dumps(record, indent=1))
    print(f"written: {args.out}/frontier.md, frontier.json")


if __name__ == "__main__":
    main()
