"""The steps of one QKT experiment as functions of (config, federation, models).

The centralised reference runner calls them in one process; the Flower ClientApp and ServerApp
call the same functions on the nodes and on the server. Keeping them here is what makes the two
paths agree.
"""

from __future__ import annotations

import copy
import hashlib
import inspect
import json
import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict
from pathlib import Path

import torch
from torch import nn

from qkt_flower.config import ExperimentConfig, optim_spec, qkt_spec
from qkt_flower.data.federation import Federation
from qkt_flower.models import build_model
from qkt_flower.qkt.engine import mixed_precision
from qkt_flower.qkt.local import train_local
from qkt_flower.qkt.mask import ExpertSelection, expert_mask, select_experts
from qkt_flower.qkt.phases import Expert, QueryTask, balanced_finetune, query_learning
from qkt_flower.qkt.probe import probe_answer


def resolve_device(name: str) -> torch.device:
    """``auto`` picks CUDA when present, else CPU; anything else is passed to :class:`torch.device`."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def precision(cfg: ExperimentConfig, device: torch.device):
    """The training precision of ``cfg.amp`` on ``device``: bfloat16 autocast or full precision.

    ``auto`` = bfloat16 on a CUDA device that supports it (tensor cores, half the activation memory),
    full precision on CPU (bfloat16 matmuls are slower than float32 on most CPUs); ``true`` forces it.
    """
    mode = str(cfg.amp).lower()  # YAML reads a bare true/false as a bool; the schema field is a string
    on = mode == "true" or (mode == "auto" and device.type == "cuda" and torch.cuda.is_bf16_supported())
    return mixed_precision(torch.bfloat16 if on else None)


@contextmanager
def every_core() -> Iterator[None]:
    """Let torch use every core this process may run on, for a step that only one node runs.

    A context manager, or a decorator (``@every_core()``) for a whole handler.

    Ray gives each simulated node one CPU (so that nodes train in parallel) and torch then uses one
    thread; the query phases, the baselines and the evaluations run on the querying node alone, and
    would leave the other cores idle.
    """
    before = torch.get_num_threads()
    torch.set_num_threads(max(len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else 1, before))
    try:
        yield
    finally:
        torch.set_num_threads(before)


def client_seed(seed: int, client: int) -> int:
    """Seed of client ``client``'s model init and batch order: independent of which process trains it."""
    return seed * 100_003 + client


def code_fingerprint(*code) -> str:
    """Hash of the source of ``code`` (modules, functions, classes).

    In a cache key it makes the cache follow the code that fills it: a session-19 grid once loaded
    FedAvg models cached by an older version, and its table could not be reproduced afterwards.
    """
    h = hashlib.sha256()
    for obj in code:
        h.update(inspect.getsource(obj).encode())
    return h.hexdigest()[:12]


def local_training_code() -> tuple:
    """The code that turns (config, seed) into a trained local model: data, partition, models, step 0."""
    import qkt_flower.data.augment as augment
    import qkt_flower.data.datasets as datasets
    import qkt_flower.data.federation as federation
    import qkt_flower.data.idx as idx
    import qkt_flower.data.loaders as loaders
    import qkt_flower.data.partition as partition
    import qkt_flower.data.query as query
    import qkt_flower.data.sources as sources
    import qkt_flower.models as models
    import qkt_flower.models.cnn as cnn
    import qkt_flower.models.resnet as resnet
    import qkt_flower.qkt.engine as engine
    import qkt_flower.qkt.local as local

    return (augment, datasets, federation, idx, loaders, partition, query, sources, models, cnn, resnet, engine, local,
            client_seed, train_client)  # fmt: skip


def local_model_key(cfg: ExperimentConfig) -> str:
    """Hash of everything that determines the local models (data, partition, query cut, model, step 0, seed, code)."""
    local = {k: v for k, v in asdict(cfg.local).items() if k != "cache_dir"}
    parts = [asdict(cfg.dataset), asdict(cfg.partition), asdict(cfg.query), asdict(cfg.model), local, cfg.seed,
             code_fingerprint(*local_training_code())]  # fmt: skip
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:16]


def train_client(cfg: ExperimentConfig, fed: Federation, client: int, device: torch.device) -> nn.Module:
    """Step 0 for one client: build its model from its seed and train it on its partition.

    With ``local.cache_dir`` set, a model trained before under the same :func:`local_model_key` is
    loaded instead of retrained (sweeps over QKT settings then cost only the query phases).
    """
    data = fed.client_data(client)
    model = build_model(cfg.model.name, data.input_shape, data.num_classes, client_seed(cfg.seed, client))
    cache = local_cache_file(cfg, client)
    if cache is not None and cache.is_file():
        model.load_state_dict(torch.load(cache, map_location="cpu", weights_only=True))
        return model.to(device).eval()
    local = cfg.local
    with precision(cfg, torch.device(device)):
        train_local(
            model,
            data,
            local.epochs,
            local.batch_size,
            optim_spec(local),
            client_seed(cfg.seed, client),
            device=device,
            progress=cfg.progress,
            desc=f"client {client}",
            outlier_exposure=local.outlier_exposure,
        )
    if cache is not None:
        cache.parent.mkdir(parents=True, exist_ok=True)
        tmp = cache.with_suffix(".tmp")
        torch.save(model.state_dict(), tmp)
        tmp.replace(cache)
    return model.eval()


def local_cache_file(cfg: ExperimentConfig, client: int) -> Path | None:
    """Where client ``client``'s trained model is cached (``None`` when ``local.cache_dir`` is off)."""
    if not cfg.local.cache_dir:
        return None
    return Path(cfg.local.cache_dir).expanduser() / local_model_key(cfg) / f"client_{client}.pt"


def samples_to_train(cfg: ExperimentConfig, client: int, n: int) -> int:
    """Samples step 0 will push through for a client with ``n`` examples (0 if its model is cached)."""
    cache = local_cache_file(cfg, client)
    return 0 if cache is not None and cache.is_file() else cfg.local.epochs * n


def answer_probe(cfg: ExperimentConfig, model: nn.Module, input_shape: tuple[int, ...], device) -> torch.Tensor:
    """A teacher's probe reply: mean softmax over the noise regenerated from the probe's seed."""
    p = cfg.strategy.probe
    return probe_answer(model, tuple(input_shape), p.n, p.seed, p.kind, p.temperature, p.standardize, p.batch_size,
                        device)  # fmt: skip


def masks_from_scores(cfg: ExperimentConfig, scores: dict[int, torch.Tensor]) -> dict[int, torch.Tensor]:
    """Expert mask of every teacher (all-true when masking is disabled: the "no mask" ablation)."""
    m = cfg.strategy.mask
    if not m.enabled:
        return {k: torch.ones_like(s, dtype=torch.bool) for k, s in scores.items()}
    param = {"relative": m.lam, "topk": m.topk, "max_ratio": m.max_ratio}[m.rule]
    return {k: expert_mask(s, m.rule, param) for k, s in scores.items()}


def true_profiles(cfg: ExperimentConfig, fed: Federation, clients) -> dict[int, torch.Tensor]:
    """Each teacher's true class profile: classes that make up at least ``profile_min_share`` of its data."""
    out = {}
    for k in clients:
        counts = fed.class_counts(k).double()
        out[k] = counts / counts.sum().clamp_min(1) >= cfg.strategy.mask.profile_min_share
    return out


def choose_experts(
    cfg: ExperimentConfig, scores: dict[int, torch.Tensor], query_classes: tuple[int, ...]
) -> tuple[dict[int, torch.Tensor], ExpertSelection]:
    """Masks of every teacher and the experts of each query class."""
    masks = masks_from_scores(cfg, scores)
    return masks, select_experts(masks, scores, query_classes)


def expert_classes(
    masks: dict[int, torch.Tensor], selection: ExpertSelection
) -> dict[int, tuple[tuple[int, ...], tuple[int, ...]]]:
    """Per relevant teacher: (query classes it teaches, classes it knows = its gate).

    A fallback expert's queried class is added to what it knows, or its gate would silence it.
    """
    out = {}
    for k in selection.relevant:
        known = tuple(int(c) for c in torch.nonzero(masks[k]).flatten())
        queried = tuple(selection.classes_of(k))
        out[k] = (queried, tuple(sorted({*known, *queried})))
    return out


def make_experts(
    models: dict[int, nn.Module], masks: dict[int, torch.Tensor], selection: ExpertSelection
) -> list[Expert]:
    """The experts as phase code needs them, in teacher-id order."""
    return [Expert(models[k], q, known) for k, (q, known) in expert_classes(masks, selection).items()]


def query_task(fed: Federation) -> QueryTask:
    """The querying client's transfer set (its own training data) and class split."""
    s = fed.scenario
    return QueryTask(fed.client_data(s.client), s.query_classes, s.local_classes)


def learn_query(
    cfg: ExperimentConfig, fed: Federation, local_model: nn.Module, experts: list[Expert], device, on_phase_end=None
):
    """Phases 1/2 (per ``strategy.mode``) on the querying client; returns ``(model, info)``."""
    spec = qkt_spec(cfg.strategy)
    with precision(cfg, torch.device(device)):
        return query_learning(local_model, query_task(fed), experts, spec, cfg.seed, device, cfg.progress, on_phase_end)


def control_model(cfg: ExperimentConfig, fed: Federation, local_model: nn.Module, device) -> nn.Module:
    """The class-balanced CE control on QKT's whole-network budget (no teacher; also the baselines' "+ FT")."""
    spec = qkt_spec(cfg.strategy)
    with precision(cfg, torch.device(device)):
        return balanced_finetune(
            local_model, query_task(fed), spec.whole_network_budget(), cfg.seed, device, cfg.progress, spec.calibration,
            spec.augment_shots, spec.augment_local,
        )  # fmt: skip


def one_round_baseline(
    cfg: ExperimentConfig,
    fed: Federation,
    name: str,
    local_model: nn.Module,
    teachers: dict[int, nn.Module],
    sizes: dict[int, int],
    device,
) -> nn.Module:
    """A one-round baseline on the querying client, from every teacher's weights (no probe, no mask).

    ``sizes`` are the clients' sample counts (the server learns them from the train replies), used by
    FedDF's weighted average. Budgets are QKT's whole-network budget (phase 1's batches and optimiser,
    the epochs ``strategy.mode`` trains the whole network for).
    """
    from qkt_flower.baselines.averaging import average_state_dicts
    from qkt_flower.baselines.distill import ensemble_distillation, vanilla_kd
    from qkt_flower.baselines.ensemble import LogitEnsemble

    spec = qkt_spec(cfg.strategy)
    budget = spec.whole_network_budget()
    members = [teachers[k].to(device).eval() for k in sorted(teachers)]
    if name == "ensemble":  # every client's model, the querying client's own included
        return LogitEnsemble([local_model.to(device).eval(), *members]).eval()
    if name == "vanilla_kd":
        with precision(cfg, torch.device(device)):
            return vanilla_kd(
                local_model, query_task(fed), members, budget, spec.temperature, cfg.seed, device, cfg.progress
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
                start, query_task(fed), ensemble, budget, spec.temperature, cfg.seed, device, cfg.progress
            )
    raise ValueError(f"unknown one-round baseline {name!r}")


def federated_round(
    cfg: ExperimentConfig, fed: Federation, client: int, model: nn.Module, server_round: int, mu: float, device
) -> nn.Module:
    """One client round of FedAvg (``mu = 0``) / FedProx from the global weights in ``model`` (trained in place)."""
    from qkt_flower.baselines.proximal import train_round

    b = cfg.baselines
    seed = client_seed(cfg.seed, client) + 7_919 * server_round  # a fresh batch order every round
    with precision(cfg, torch.device(device)):
        train_round(model, fed.client_data(client), b.epochs_per_round, cfg.local.batch_size, optim_spec(cfg.local),
                    seed, mu, device)  # fmt: skip
    return model.eval()


def federated_baseline(
    cfg: ExperimentConfig, fed: Federation, mu: float, rounds: int, eval_rounds, device
) -> dict[int, nn.Module]:
    """FedAvg (``mu = 0``) / FedProx without Flower: the global model after each round in ``eval_rounds``.

    The same client round (:func:`federated_round`) and the same sample-weighted average, in client
    order, as the Flower path (``fl/baselines.py``): the reference runner and the interference grid use
    it to compare against one-round methods without a simulation per cell.
    """
    from qkt_flower.baselines.averaging import average_state_dicts

    model = initial_global_model(cfg, fed.train.input_shape, fed.train.num_classes).to(device)
    clients = list(range(fed.num_clients))
    sizes = [len(fed.scenario.partitions[k]) for k in clients]
    out: dict[int, nn.Module] = {}
    for server_round in range(1, rounds + 1):
        start = copy.deepcopy(model.state_dict())
        updates = []
        for k in clients:
            model.load_state_dict(start)
            updates.append(
                {
                    n: t.detach().clone()
                    for n, t in federated_round(cfg, fed, k, model, server_round, mu, device).state_dict().items()
                }
            )
        model.load_state_dict(average_state_dicts(updates, sizes))
        if server_round in eval_rounds:
            out[server_round] = copy.deepcopy(model).eval()
    return out


def initial_global_model(cfg: ExperimentConfig, input_shape, num_classes: int) -> nn.Module:
    """The federated baselines' starting point: a fresh model from the run's seed."""
    return build_model(cfg.model.name, tuple(input_shape), num_classes, seed=cfg.seed)
