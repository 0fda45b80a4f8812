"""The probe-privacy table from a query grid run with the ``"QKT, probe noise <scale>"`` variants.

    python scripts/query_grid.py --variants "QKT (default)" "balanced-CE control" "QKT, probe noise 0.01" \
        "QKT, probe noise 0.02" "QKT, probe noise 0.05" "QKT, probe noise 0.1" --out outputs/privacy
    python scripts/privacy_table.py outputs/privacy --out results/probe_privacy

Per split and noise scale: mask precision / recall against the teachers' true class profiles (what the server
learns of them), QKT's query accuracy, Δlocal and margin over the best in-band non-QKT method. Prints Markdown and
writes ``<out>.md`` / ``<out>.json``.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from qkt_flower.experiments.privacy import markdown, privacy_table


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("grid", type=Path, help="a query_grid.py --out folder (its rows.jsonl)")
    parser.add_argument("--out", type=Path, default=Path("outputs/probe_privacy"))
    args = parser.parse_args(argv)
    path = args.grid / "rows.jsonl"
    try:
        rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
        table = privacy_table(rows)
    except (OSError, ValueError, KeyError) as err:
        print(f"error: {path}: not a query grid's rows with the probe-noise variants ({type(err).__name__}: {err})",
              file=sys.stderr)  # fmt: skip
        sys.exit(2)
    text = markdown(table)
    print(text)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_suffix(".md").write_text(text + "\n")
    args.out.with_suffix(".json").write_text(json.dumps(table, indent=1))


if __name__ == "__main__":
    main()
