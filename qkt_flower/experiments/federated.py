"""Baselines as steps of an experiment: one-round ones from every teacher, FedAvg / FedProx without Flower.

The Flower runtime (``fl/baselines.py``) runs the same client round and the same sample-weighted average, in
client order; the in-process pipeline and the grid use these to compare against QKT without a simulation per cell.
"""

from __future__ import annotations

import copy
import functools

import torch
from torch import nn

from qkt_flower.baselines.averaging import average_state_dicts
from qkt_flower.baselines.distill import ensemble_distillation, vanilla_kd
from qkt_flower.baselines.ensemble import LogitEnsemble
from qkt_flower.baselines.proximal import train_round
from qkt_flower.data.federation import Federation
from qkt_flower.errors import ConfigError
from qkt_flower.experiments.steps import client_seed, precision, query_task
from qkt_flower.experiments.threads import in_parallel, one_thread
from qkt_flower.models import build_model

ONE_ROUND = ("ensemble", "vanilla_kd", "feddf")


def one_round_baseline(
    cfg,
    fed: Federation,
    name: str,
    local_model: nn.Module,
    teachers: dict[int, nn.Module],
    sizes: dict[int, int],
    device,
) -> nn.Module:
    """A one-round baseline on the querying client, from every teacher's weights (no probe, no mask).

    ``sizes`` are the clients' sample counts (the server learns them from the train replies), used by FedDF's
    weighted average. Budgets are QKT's whole-network budget (:meth:`MethodSpec.whole_network_budget`), its
    KD temperature and weight those of ``L_query``.
    """
    budget, query = cfg.method.whole_network_budget(), cfg.method.terms.query
    members = [teachers[k].to(device).eval() for k in sorted(teachers)]
    if name == "ensemble":  # every client's model, the querying client's own included
        return LogitEnsemble([local_model.to(device).eval(), *members]).eval()
    if budget is None:
        raise ConfigError(
            "method.phases",
            [p.name for p in cfg.method.phases],
            f"a method that trains the whole network (the {name} baseline trains for its budget)",
        )
    if name == "vanilla_kd":
        with precision(cfg, torch.device(device)):
            return vanilla_kd(
                local_model,
                query_task(fed),
                members,
                budget,
                query.temperature,
                cfg.seed,
                device,
                cfg.progress,
                beta=query.weight,
            )
    if name == "feddf":
        everyone = {**teachers, fed.scenario.client: local_model}
        ids = sorted(everyone)
        average = average_state_dicts([everyone[k].state_dict() for k in ids], [sizes[k] for k in ids])
        start = build_model(cfg.model.name, fed.train.input_shape, fed.train.num_classes, seed=cfg.seed)
        start.load_state_dict(average)
        ensemble = [everyone[k].to(device).eval() for k in ids]
        with precision(cfg, torch.device(device)):
            return ensemble_distillation(
                start, query_task(fed), ensemble, budget, query.temperature, cfg.seed, device, cfg.progress
            )
    raise ValueError(f"unknown one-round baseline {name!r}")


def federated_round(
    cfg, fed: Federation, client: int, model: nn.Module, server_round: int, mu: float, device
) -> nn.Module:
    """One client round of FedAvg (``mu = 0``) / FedProx from the global weights in ``model``, trained in place.

    On one CPU thread, as in the simulation (:mod:`qkt_flower.experiments.threads`).
    """
    b = cfg.baselines
    seed = client_seed(cfg.seed, client) + 7_919 * server_round  # a fresh batch order every round
    with one_thread(device), precision(cfg, torch.device(device)):
        train_round(
            model,
            fed.client_data(client),
            b.epochs_per_round,
            cfg.local.batch_size,
            cfg.local.optim,
            seed,
            mu,
            device,
            augment=cfg.local.augment,
        )
    return model.eval()


def client_update(cfg, fed: Federation, model: nn.Module, server_round: int, mu: float, device, client: int):
    """Client ``client``'s weights after its round from a copy of the global ``model`` (``model`` is untouched)."""
    trained = federated_round(cfg, fed, client, copy.deepcopy(model), server_round, mu, device)
    return {n: t.detach().clone() for n, t in trained.state_dict().items()}


def federated_baseline(cfg, fed: Federation, mu: float, rounds: int, eval_rounds, device) -> dict[int, nn.Module]:
    """FedAvg (``mu = 0``) / FedProx without Flower: the global model after each round in ``eval_rounds``."""
    model = initial_global_model(cfg, fed.train.input_shape, fed.train.num_classes).to(device)
    clients = list(range(fed.num_clients))
    sizes = [len(fed.scenario.partitions[k]) for k in clients]
    out: dict[int, nn.Module] = {}
    for server_round in range(1, rounds + 1):  # the clients of a round side by side, each on a copy
        update = functools.partial(client_update, cfg, fed, model, server_round, mu, device)
        updates = in_parallel(update, clients, device)
        model.load_state_dict(average_state_dicts(updates, sizes))
        if server_round in eval_rounds:
            out[server_round] = copy.deepcopy(model).eval()
    return out


def initial_global_model(cfg, input_shape, num_classes: int) -> nn.Module:
    """The federated baselines' starting point: a fresh model from the run's seed."""
    return build_model(cfg.model.name, tuple(input_shape), num_classes, seed=cfg.seed)
