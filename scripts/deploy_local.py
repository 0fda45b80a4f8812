"""Run QKT on Flower's deployment runtime on this machine: a SuperLink, N SuperNodes, then ``flwr run``.

Starts ``flower-superlink`` (TLS + SuperNode authentication unless told otherwise), makes and registers one
key per node, starts ``flower-supernode`` k with ``--node-config 'partition-id=k data-root=...'``, runs
``flwr run . deployment`` with the Hydra overrides, writes the results and stops every process it started
(also on Ctrl-C or failure). Certificates, keys, each process's FLWR_HOME and logs go under ``--workdir``.

    python scripts/deploy_local.py                                  # default experiment, 10 nodes, TLS + auth
    python scripts/deploy_local.py --insecure -- seed=1 query=multi # plain HTTP, no node auth (local testing)
    python scripts/deploy_local.py --data-root /data/fmnist -- partition.num_clients=4
"""

from __future__ import annotations

import argparse
import sys
import time
from datetime import datetime
from pathlib import Path

from qkt_flower.config import load_config
from qkt_flower.data.federation import build_federation
from qkt_flower.deploy.local import LocalDeployment
from qkt_flower.errors import ConfigError, DataError


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("overrides", nargs="*", help="Hydra overrides of conf/ (after --)")
    parser.add_argument("--insecure", action="store_true", help="no TLS and no node authentication")
    parser.add_argument("--no-auth", action="store_true", help="TLS, but any SuperNode may join")
    parser.add_argument("--data-root", help="each node's dataset folder (node config data-root)")
    parser.add_argument("--workdir", type=Path, default=None, help="default: outputs/deployment/<date>/<time>")
    parser.add_argument("--out", type=Path, default=None, help="results folder (default: <workdir>/results)")
    parser.add_argument("--timeout", type=float, default=3600.0, help="seconds the run may take")
    args = parser.parse_args(argv)
    try:  # refuse a bad value, a missing data folder or an impossible split before any process starts
        cfg = load_config([*args.overrides, *([f"dataset.root={args.data_root}"] if args.data_root else [])])
        build_federation(cfg.dataset, cfg.partition, cfg.query, cfg.seed, cfg.partition_cache)
    except (ConfigError, DataError) as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)
    workdir = args.workdir or Path(f"outputs/deployment/{datetime.now():%Y-%m-%d/%H-%M-%S}")
    out = args.out or workdir / "results"
    nodes = cfg.partition.num_clients  # node k holds partition k
    secure = not args.insecure
    print(f"starting a SuperLink and {nodes} SuperNodes ({'TLS' if secure else 'insecure'}"
          f"{', node auth' if secure and not args.no_auth else ''}); logs: {workdir / 'logs'}")  # fmt: skip
    start = time.perf_counter()
    try:
        with LocalDeployment(workdir, nodes, secure=secure, auth=secure and not args.no_auth,
                             data_root=args.data_root) as deployment:  # fmt: skip
            print(f"SuperLink at {deployment.address}; {deployment.online_nodes()} SuperNodes online; running QKT")
            deployment.run(args.overrides, out, timeout=args.timeout)
    except (RuntimeError, TimeoutError) as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(1)
    print(f"finished in {time.perf_counter() - start:.0f} s; results: {out / 'results.json'}")


if __name__ == "__main__":
    main()
