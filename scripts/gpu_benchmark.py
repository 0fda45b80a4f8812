r"""The benchmark's GPU rows in one command: throughput against bare PyTorch with AMP, fractional GPUs, a preset.

The rows are :mod:`qkt_flower.fl.gpu_benchmark`'s::

    python scripts/gpu_benchmark.py --cifar-root data/cifar10                   # on a GPU machine, ~10 min
    python scripts/gpu_benchmark.py --device cpu --fractions 1 --extra dataset.train_per_class=50 \
        dataset.test_per_class=20 partition.num_clients=3 local.epochs=1        # smoke check on CPU

Prints a Markdown table and writes ``gpu_benchmark.json`` / ``gpu_benchmark.md`` under ``--out``
(default ``outputs/gpu_benchmark/<date>/<time>``); each run's results and log beside them.
"""

from __future__ import annotations

import argparse
import json
import sys
from datetime import datetime
from pathlib import Path

from qkt_flower.fl import gpu_benchmark


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cuda", help="cuda (default), cuda:N, or cpu for a smoke check")
    parser.add_argument("--fractions", type=float, nargs="+", default=list(gpu_benchmark.FRACTIONS),
                        help="GPU per simulated client")  # fmt: skip
    parser.add_argument("--cifar-root", help="folder holding cifar-10-batches-py (else the paper row is skipped)")
    parser.add_argument("--extra", nargs="*", default=[], help="Hydra overrides for the throughput runs")
    parser.add_argument("--paper-extra", nargs="*", default=[], help="Hydra overrides for the paper preset run")
    parser.add_argument("--timeout", type=float, default=240.0, help="seconds per run before it is killed")
    parser.add_argument("--out", type=Path, help="default: outputs/gpu_benchmark/<date>/<time>")
    args = parser.parse_args(argv)
    if args.device != "cpu" and not args.device.startswith("cuda"):
        print(f"error: --device {args.device}: cuda, cuda:N or cpu", file=sys.stderr)
        sys.exit(2)
    if any(not 0 < f <= 1 for f in args.fractions) or args.timeout <= 0:
        print("error: --fractions must lie in (0, 1] and --timeout be > 0", file=sys.stderr)
        sys.exit(2)
    if args.device != "cpu":
        import torch

        if not torch.cuda.is_available():
            print(f"error: --device {args.device}: this machine has no CUDA GPU (--device cpu: smoke check)",
                  file=sys.stderr)  # fmt: skip
            sys.exit(2)
    out = args.out or Path("outputs/gpu_benchmark") / f"{datetime.now():%Y-%m-%d/%H-%M-%S}"
    out.mkdir(parents=True, exist_ok=True)
    record = gpu_benchmark.run_all(out, args.device, args.fractions, args.cifar_root, args.extra, args.paper_extra,
                                   args.timeout)  # fmt: skip
    record["argv"] = sys.argv
    text = gpu_benchmark.markdown(record)
    print(text)
    (out / "gpu_benchmark.md").write_text(text + "\n")
    (out / "gpu_benchmark.json").write_text(json.dumps(record, indent=1))
    print(f"written: {out}/gpu_benchmark.md, gpu_benchmark.json")


if __name__ == "__main__":
    main()
