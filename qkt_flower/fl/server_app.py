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

from qkt_flower.config import ExperimentConfig, compose_config, to_config
from qkt_flower.errors import ConfigError
from qkt_flower.fl.baselines import run_baselines
from qkt_flower.fl.checkpoint import Checkpoint
from qkt_flower.fl.strategy import QKTStrategy
from qkt_flower.results import check_writable, nest_metrics, save_results

log = logging.getLogger(__name__)


def config_yaml_from_run_config(run_config: dict) -> str:
    """Resolved experiment YAML from ``flwr run``'s run_config (``overrides`` = Hydra overrides)."""
    overrides = shlex.split(str(run_config.get("overrides", "")))
    for override in overrides:  # the submitter's text: never resolved with the ServerApp's environment
        if "${" in override:
            raise ConfigError("overrides", override, "plain values: no interpolation (${...}) from a submitted run")
    return OmegaConf.to_yaml(compose_config(overrides), resolve=True)


def run_experiment(cfg: ExperimentConfig, cfg_yaml: str, grid: Grid, checkpoint: Checkpoint) -> dict:
    """QKT, then the configured baselines, over ``grid``; the results dictionary."""
    start = time.perf_counter()
    qkt = QKTStrategy(cfg, cfg_yaml, cfg.simulation.reply_timeout, cfg.simulation.connect_timeout, checkpoint)
    results = qkt.run(grid)
    results["seconds"]["total"] = time.perf_counter() - start
    if cfg.baselines.one_round or cfg.baselines.federated:
        start = time.perf_counter()
        results["baselines"] = checkpoint.get("baselines") or run_baselines(qkt, grid)
        checkpoint.put("baselines", results["baselines"])
        results["seconds"]["baselines"] = time.perf_counter() - start
    for mine in results.get("queriers", {}).values():  # several queriers: each its own evaluation objects
        mine.update(evaluations(mine))
    return {**results, **evaluations(results)}


def evaluations(results: dict) -> dict[str, dict]:
    """The top-level evaluation objects of ``results.json`` (the reference runner's shape) from the replies.

    ``before`` / ``after`` / ``control`` from the querying node's metrics; each one-round baseline under its
    name; a federated baseline after ``r`` rounds as ``fedavg_<r>rd`` (``_ft``: fine-tuned by the control's recipe).
    """
    out = nest_metrics(results.get("metrics") or {})
    baselines = results.get("baselines") or {}
    out.update(baselines.get("one_round", {}))
    for name in ("fedavg", "fedprox"):
        for r, evaluation in (baselines.get(name) or {}).get("rounds", {}).items():
            if "global" in evaluation:
                out[f"{name}_{r}rd"] = evaluation["global"]
            if "finetuned" in evaluation:
                out[f"{name}_{r}rd_ft"] = evaluation["finetuned"]
    return out


def make_server_app(cfg_yaml: str | None = None, out_dir: str | Path | None = None) -> ServerApp:
    """A ServerApp running one QKT experiment; without ``cfg_yaml`` it reads ``context.run_config``."""
    app = ServerApp()

    @app.main()
    def main(grid: Grid, context: Context) -> None:
        yaml = cfg_yaml or config_yaml_from_run_config(dict(context.run_config))
        cfg = to_config(OmegaConf.create(yaml))
        folder = Path(out_dir or context.run_config.get("output-dir") or f"outputs/{datetime.now():%Y-%m-%d/%H-%M-%S}")
        check_writable(folder, cfg.overwrite)  # before any message: nothing is computed to be thrown away
        checkpoint = Checkpoint(cfg.checkpoint_dir, yaml, cfg.resume)
        if checkpoint.get("results") is not None:  # every step finished before: nothing to send
            results = {**checkpoint.get("results"), "resumed": ["all"]}
        else:
            results = run_experiment(cfg, yaml, grid, checkpoint)
            checkpoint.put("results", results)
        path = save_results(folder, results, OmegaConf.create(yaml), overwrite=cfg.overwrite)
        log.info("QKT results: %s", path)

    return app


app = make_server_app()
