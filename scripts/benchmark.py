"""Performance benchmark: Flower simulation vs bare PyTorch, probe cost, bytes, and scaling to many clients.

Every measurement runs the real entry points as subprocesses on the same machine (``qkt_flower.fl.benchmark``):

1. the default experiment both ways: whole wall time (ratio, goal ≤ 1.15), local-training throughput (samples/s
   of step 0, Flower's timed from its first handler on; ratio, goal ≥ 0.9), probe + masking as a share of local
   training (goal ≤ 1 %), and the bytes QKT moved vs one FedAvg round over all clients (goal ≤ 0.3);
2. scaling: wall time and peak memory (PSS summed over the process tree: driver, Ray and its workers)
   for ``--clients`` simulated clients (small CNN, Fashion-MNIST, ``local.epochs=1``; from 10,000 clients on,
   ``strategy.mask.max_experts=300``: see docs/PERFORMANCE.md#scaling). 3,000 clients take ~13 min, 10,000 ~30.

    python scripts/benchmark.py                                  # 10, 100, 1000, 3000, 10000 clients
    python scripts/benchmark.py --clients 10 100 --skip-default  # scaling only

Prints a Markdown table and writes ``benchmark.json`` / ``benchmark.md`` (plus each run's results and log)
under ``--out`` (default ``outputs/benchmark/<date>/<time>``).
"""

from __future__ import annotations

import argparse
import json
import sys
from datetime import datetime
from pathlib import Path

from qkt_flower.fl import benchmark


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clients", type=int, nargs="*", default=[10, 100, 1000, 3000, 10000], help="scaling counts")
    parser.add_argument("--skip-default", action="store_true", help="skip the default-experiment comparison")
    parser.add_argument("--extra", nargs="*", default=[], help="Hydra overrides for every run")
    parser.add_argument("--timeout", type=float, default=3600.0, help="seconds per run before it is killed")
    parser.add_argument("--out", type=Path, help="default: outputs/benchmark/<date>/<time>")
    args = parser.parse_args(argv)
    if any(n < 2 for n in args.clients) or args.timeout <= 0:
        print("error: --clients must be integers >= 2 and --timeout > 0", file=sys.stderr)
        sys.exit(2)
    out = args.out or Path("outputs/benchmark") / f"{datetime.now():%Y-%m-%d/%H-%M-%S}"
    out.mkdir(parents=True, exist_ok=True)
    default = None
    if not args.skip_default:
        print("default experiment: reference runner, then Flower simulation ...", flush=True)
        try:
            default = benchmark.default_experiment(out, args.extra, args.timeout)
        except RuntimeError as err:
            print(f"error: {err}", file=sys.stderr)
            sys.exit(1)
    rows = benchmark.scaling(out, args.clients, args.extra, args.timeout)
    machine = benchmark.machine()
    text = benchmark.markdown(default, rows, machine)
    print(text)
    (out / "benchmark.md").write_text(text + "\n")
    record = {"machine": machine, "default": default, "scaling": rows, "goals": benchmark.GOALS, "argv": sys.argv}
    (out / "benchmark.json").write_text(json.dumps(record, indent=1))
    print(f"written: {out}/benchmark.md, benchmark.json")


if __name__ == "__main__":
    main()
