"""Run the QKT apps with ``flwr run .`` on a local simulation SuperLink, and clean up after it.

``flwr run . local`` (connection address ``:local:``) starts a *detached* SuperLink that keeps running after
the run. This module wraps the plain Flower CLI so that scripts and tests leave nothing behind: it points
``FLWR_HOME`` at a folder of the run, sets the offline switches, derives the federation size and client
resources from the Hydra config (``partition.num_clients``, ``simulation.num_cpus`` / ``num_gpus``) so they are
never restated by hand, checks the run's final status with ``flwr ls`` (``--stream`` exits 0 for a failed run)
and stops the SuperLink by its pid.

    python -m qkt_flower.fl.launch seed=1 query=multi        # Hydra overrides, as for qkt-flower
"""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
import tempfile
from pathlib import Path

from omegaconf import OmegaConf

from qkt_flower.config import compose_config, to_config
from qkt_flower.data.federation import build_federations
from qkt_flower.fl import isolation
from qkt_flower.fl.checkpoint import local_models_dir
from qkt_flower.fl.node import ENV as NODE_ENV
from qkt_flower.fl.node import NodeSettings, simulation_defaults
from qkt_flower.fl.processes import stop_trees

PROJECT_DIR = Path(__file__).resolve().parents[2]

OFFLINE_ENV = {
    "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION": "1",  # else every run tries to `uv sync` from the network
    "FLWR_TELEMETRY_ENABLED": "0",
    "FLWR_DISABLE_UPDATE_CHECK": "1",
    "HF_HUB_OFFLINE": "1",
}


def flwr_env(home: Path, node: NodeSettings | None = None) -> dict[str, str]:
    """Environment for the ``flwr`` CLI: offline switches, ``FLWR_HOME`` and (``node``) the simulated nodes' settings.

    ``flwr run`` passes the simulated nodes no node config of ours: they read their paths from ``QKT_NODE_CONFIG``,
    which the SuperLink it starts (and every process under it) inherits.
    """
    path = os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")])  # flower-superlink
    env = {**os.environ, **OFFLINE_ENV, "FLWR_HOME": str(home), "PATH": path}
    if node is not None:
        env[NODE_ENV] = node.as_node_config()
    return env


def write_local_connection(home: Path) -> None:
    """``$FLWR_HOME/config.toml`` with one connection, ``local``: the local simulation SuperLink."""
    home.mkdir(parents=True, exist_ok=True)
    (home / "config.toml").write_text('[superlink]\ndefault = "local"\n\n[superlink.local]\naddress = ":local:"\n')


def flwr_bin(name: str = "flwr") -> str:
    """A Flower command (``flwr``, ``flower-superlink``, ...) of this Python environment."""
    return str(Path(sys.executable).with_name(name))


def superlink_pids(home: Path) -> list[int]:
    """Pids of SuperLinks started by ``flwr run`` for this ``FLWR_HOME`` (their ``--database`` lives in it)."""
    pids = []
    for proc in Path("/proc").glob("[0-9]*"):
        try:
            argv = (proc / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if any(a.endswith(b"flower-superlink") for a in argv) and any(str(home).encode() in a for a in argv):
            pids.append(int(proc.name))
    return pids


def stop_superlink(home: Path, grace: float = 10.0) -> list[int]:
    """Stop (SIGTERM, then SIGKILL after ``grace`` s) every SuperLink of this ``FLWR_HOME`` and its children."""
    pids = superlink_pids(home)
    stop_trees(pids, grace)
    return pids


def last_run_status(home: Path, connection: str = "local") -> str:
    """Status of the newest run on a SuperLink connection of ``home``, e.g. ``finished:completed``."""
    out = subprocess.run(
        [flwr_bin(), "ls", connection, "--format", "json"], env=flwr_env(home), capture_output=True, text=True
    )
    try:
        runs = json.loads(out.stdout)["runs"]
    except (ValueError, KeyError) as err:
        raise RuntimeError(f"`flwr ls` gave no run list: {out.stdout or out.stderr}") from err
    return max(runs, key=lambda r: r["pending-at"])["status"] if runs else "no run"


def flwr_run_simulation(
    overrides: list[str], out_dir: Path, home: Path | None = None, timeout: float | None = None
) -> subprocess.CompletedProcess:
    """``flwr run . local --stream`` with the given Hydra overrides; results go to ``out_dir``.

    Raises ``RuntimeError`` if the run did not finish as completed. The SuperLink is stopped in every case.
    """
    dcfg = compose_config(overrides)
    cfg = to_config(dcfg)
    # refuses bad config values and query scenarios before any process starts
    build_federations(cfg.dataset, cfg.partition, cfg.query, cfg.seed, cfg.partition_cache)
    home = Path(home or tempfile.mkdtemp(prefix="flwr-home-"))
    write_local_connection(home)
    run_config = f"overrides={json.dumps(shlex.join(overrides))} output-dir={json.dumps(str(Path(out_dir).resolve()))}"
    federation = (
        f"num-supernodes={cfg.partition.num_clients} client-resources-num-cpus={cfg.simulation.num_cpus} "
        f"client-resources-num-gpus={float(cfg.simulation.num_gpus)}"
    )
    cmd = [flwr_bin(), "run", str(PROJECT_DIR), "local", "--stream", "--run-config", run_config,
           "--federation-config", federation]  # fmt: skip
    try:
        nodes = simulation_defaults(cfg, local_models_dir(cfg.checkpoint_dir, OmegaConf.to_yaml(dcfg, resolve=True)))
        proc = subprocess.run(cmd, env=flwr_env(home, nodes), timeout=timeout, text=True, capture_output=True)
        status = last_run_status(home)
    finally:
        stop_superlink(home)
    if proc.returncode != 0 or status != "finished:completed":
        raise RuntimeError(f"flwr run failed (exit {proc.returncode}, status {status}):\n{proc.stdout}\n{proc.stderr}")
    return proc


def main(argv: list[str] | None = None) -> None:
    """``python -m qkt_flower.fl.launch [HYDRA OVERRIDES...]``: one QKT experiment via ``flwr run .``."""
    from datetime import datetime

    from qkt_flower.errors import ConfigError, DataError

    overrides = list(sys.argv[1:] if argv is None else argv)
    out_dir = Path(f"outputs/{datetime.now():%Y-%m-%d/%H-%M-%S}")
    try:
        if isolation.wanted(to_config(compose_config(overrides)).simulation.network):  # SuperLink, Ray: loopback only
            sys.exit(isolation.rerun("qkt_flower.fl.launch", overrides))
        if isolation.inside():
            isolation.loopback_up()
        proc = flwr_run_simulation(overrides, out_dir)
    except (ConfigError, DataError, RuntimeError) as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)
    print(proc.stdout[-2000:])
    print(f"results: {out_dir / 'results.json'}")


if __name__ == "__main__":
    main()
