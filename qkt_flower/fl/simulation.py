"""``qkt-flower``: compose the config with Hydra and run the Flower apps on the simulation runtime (Ray)."""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path

import hydra
from omegaconf import DictConfig, OmegaConf

from qkt_flower.config import CONF_DIR, ExperimentConfig, to_config
from qkt_flower.data.federation import build_federations
from qkt_flower.errors import ConfigError, DataError
from qkt_flower.experiments.steps import resolve_device
from qkt_flower.fl import isolation
from qkt_flower.fl.checkpoint import check_resumable, local_models_dir
from qkt_flower.results import check_writable


def simulate(cfg: ExperimentConfig, cfg_yaml: str, out_dir: str | Path) -> None:
    """Run QKT with ``simulation.num_supernodes`` simulated nodes; results go to ``out_dir``."""
    os.environ.setdefault("FLWR_TELEMETRY_ENABLED", "0")
    os.environ.setdefault("RAY_DEDUP_LOGS", "0")
    logging.getLogger("alembic").setLevel(logging.WARNING)  # Flower's state DB logs its setup at INFO
    from flwr.simulation import run_simulation

    from qkt_flower.fl.client_app import make_client_app
    from qkt_flower.fl.node import simulation_defaults
    from qkt_flower.fl.server_app import make_server_app

    if cfg.simulation.num_supernodes != cfg.partition.num_clients:
        raise ConfigError(
            "simulation.num_supernodes",
            cfg.simulation.num_supernodes,
            f"equal to partition.num_clients ({cfg.partition.num_clients}): one node per client",
        )
    resolve_device(cfg.device)  # the simulated nodes run here: a device this machine lacks is refused now
    check_resumable(cfg.checkpoint_dir, cfg_yaml, cfg.resume)  # a checkpoint not of this run: refused here
    # refuses a bad query scenario here, before any process starts
    build_federations(cfg.dataset, cfg.partition, cfg.query, cfg.seed, cfg.partition_cache)
    backend = {
        "client_resources": {"num_cpus": cfg.simulation.num_cpus, "num_gpus": cfg.simulation.num_gpus},
        "init_args": {"include_dashboard": False, "num_cpus": max(os.cpu_count() or 1, 1)},
    }
    # the user runs every simulated node: the user's paths are theirs (a deployed node keeps its own)
    nodes = make_client_app(simulation_defaults(cfg, local_models_dir(cfg.checkpoint_dir, cfg_yaml)))
    run_simulation(make_server_app(cfg_yaml, out_dir), nodes, cfg.simulation.num_supernodes, backend_config=backend)


@hydra.main(config_path=str(CONF_DIR), config_name="config", version_base=None)
def _hydra_main(dcfg: DictConfig) -> None:
    from hydra.core.hydra_config import HydraConfig

    out_dir = Path(HydraConfig.get().runtime.output_dir)
    try:
        cfg = to_config(dcfg)
        check_writable(out_dir, cfg.overwrite)
        if isolation.wanted(cfg.simulation.network):  # the same job, in a network namespace of its own
            rc = isolation.rerun(
                "qkt_flower.fl.simulation", [*HydraConfig.get().overrides.task, f"hydra.run.dir={out_dir}"]
            )
            if rc:
                sys.exit(rc)
            return
        if isolation.inside():
            isolation.loopback_up()
        simulate(cfg, OmegaConf.to_yaml(dcfg, resolve=True), out_dir)
    except (ConfigError, DataError) as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)
    print(f"results: {out_dir / 'results.json'}")


def main() -> None:
    """Console entry point ``qkt-flower``."""
    _hydra_main()


if __name__ == "__main__":
    main()
