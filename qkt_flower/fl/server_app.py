"""The QKT ServerApp and the ``qkt-flower`` entry point (Hydra config + Flower simulation runtime).

Configuration has one source, ``conf/``. Under ``flwr run`` the ServerApp composes it from the
``overrides`` key of ``[tool.flwr.app.config]`` (Hydra override syntax, e.g.
``flwr run . --run-config 'overrides="seed=1 query=multi"'``); under ``qkt-flower`` Hydra composes it
and hands it over directly. Either way the resolved YAML travels to the nodes inside each message.
"""

from __future__ import annotations

import logging
import shlex
import time
from datetime import datetime
from pathlib import Path

from flwr.app import Context
from flwr.serverapp import Grid, ServerApp
from omegaconf import OmegaConf

from qkt_flower.config import compose_config, to_config
from qkt_flower.fl.baselines import run_baselines
from qkt_flower.fl.strategy import QKTStrategy
from qkt_flower.results import save_results

log = logging.getLogger(__name__)


def config_yaml_from_run_config(run_config: dict) -> str:
    """Resolved experiment YAML from ``flwr run``'s run_config (``overrides`` = Hydra overrides)."""
    overrides = shlex.split(str(run_config.get("overrides", "")))
    return OmegaConf.to_yaml(compose_config(overrides), resolve=True)


def make_server_app(cfg_yaml: str | None = None, out_dir: str | Path | None = None) -> ServerApp:
    """A ServerApp running one QKT experiment; without ``cfg_yaml`` it reads ``context.run_config``."""
    app = ServerApp()

    @app.main()
    def main(grid: Grid, context: Context) -> None:
        yaml = cfg_yaml or config_yaml_from_run_config(dict(context.run_config))
        cfg = to_config(OmegaConf.create(yaml))
        start = time.perf_counter()
        qkt = QKTStrategy(cfg, yaml, cfg.simulation.reply_timeout, cfg.simulation.connect_timeout)
        results = qkt.run(grid)
        results["seconds"]["total"] = time.perf_counter() - start
        if cfg.baselines.one_round or cfg.baselines.federated:
            start = time.perf_counter()
            results["baselines"] = run_baselines(qkt, grid)
            results["seconds"]["baselines"] = time.perf_counter() - start
        folder = Path(out_dir or context.run_config.get("output-dir") or f"outputs/{datetime.now():%Y-%m-%d/%H-%M-%S}")
        path = save_results(folder, results, OmegaConf.create(yaml))
        log.info("QKT results: %s", path)

    return app


app = make_server_app()
