"""The steps of one QKT experiment as functions of (config, federation, models).

The in-process pipeline (:mod:`qkt_flower.experiments.pipeline`) calls them in one process; the Flower ClientApp
and ServerApp call the same functions on the nodes and on the server. Keeping them here is what makes the two
runtimes agree.
"""

from __future__ import annotations

import hashlib
from dataclasses import asdict
from pathlib import Path

import torch
from torch import nn

from qkt_flower.data.federation import Federation
from qkt_flower.errors import ConfigError
from qkt_flower.experiments.cache import code_fingerprint, key_of, local_models_dir
from qkt_flower.experiments.threads import one_thread
from qkt_flower.models import build_model
from qkt_flower.qkt.engine import mixed_precision
from qkt_flower.qkt.learn import query_learning
from qkt_flower.qkt.local import train_local
from qkt_flower.qkt.mask import ExpertSelection, select_experts
from qkt_flower.qkt.method import MethodSpec
from qkt_flower.qkt.probe import add_reply_noise, probe_answer
from qkt_flower.qkt.task import Expert, QueryTask


def resolve_device(name: str) -> torch.device:
    """``auto`` picks CUDA when present, else CPU; a device this machine lacks is a :class:`ConfigError`."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and (device.index or 0) >= torch.cuda.device_count():
        raise ConfigError("device", name, f"a device this machine has ({torch.cuda.device_count()} CUDA GPUs "
                          "visible): auto or cpu")  # fmt: skip
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise ConfigError("device", name, "a device this machine has (MPS is not available): auto or cpu")
    return device


def precision(cfg, device: torch.device):
    """The training precision of ``cfg.amp`` on ``device``: bfloat16 autocast or full precision.

    ``auto`` = bfloat16 on a CUDA device that supports it (tensor cores, half the activation memory),
    full precision on CPU (bfloat16 matmuls are slower than float32 on most CPUs); ``true`` forces it.
    """
    mode = str(cfg.amp).lower()  # YAML reads a bare true/false as a bool; the schema field is a string
    on = mode == "true" or (mode == "auto" and device.type == "cuda" and torch.cuda.is_bf16_supported())
    return mixed_precision(torch.bfloat16 if on else None)


def client_seed(seed: int, client: int) -> int:
    """Seed of client ``client``'s model init and batch order: independent of which process trains it."""
    return seed * 100_003 + client


def init_seed(cfg, client: int) -> int:
    """Seed of client ``client``'s initial weights.

    The run's seed (the federated baselines' start) when ``local.shared_init``, else the client's own.
    """
    return cfg.seed if cfg.local.shared_init else client_seed(cfg.seed, client)


def train_client(cfg, fed: Federation, client: int, device: torch.device) -> nn.Module:
    """Step 0 for one client: build its model from its seed and train it on its partition.

    Training runs on one CPU thread (:mod:`qkt_flower.experiments.threads`: the same model in every runtime).
    Unless ``local.cache_dir=null``, a model trained before under the same key is loaded instead of retrained
    (sweeps over QKT settings then cost only the query phases).
    """
    data = fed.client_data(client)
    model = build_model(cfg.model.name, data.input_shape, data.num_classes, init_seed(cfg, client))
    cache = local_cache_file(cfg, fed, client)
    if cache is not None and cache.is_file():
        model.load_state_dict(torch.load(cache, map_location="cpu", weights_only=True))
        return model.to(device).eval()
    local = cfg.local
    with one_thread(device), precision(cfg, torch.device(device)):
        train_local(
            model,
            data,
            local.epochs,
            local.batch_size,
            local.optim,
            client_seed(cfg.seed, client),
            device=device,
            progress=cfg.progress,
            desc=f"client {client}",
            augment=local.augment,
        )
    if cache is not None:
        cache.parent.mkdir(parents=True, exist_ok=True)
        tmp = cache.with_suffix(".tmp")
        torch.save(model.state_dict(), tmp)
        tmp.replace(cache)
    return model.eval()


def local_training_code() -> tuple:
    """The code that turns (config, seed) into a trained local model: data, partition, models, step 0."""
    import qkt_flower.data.augment as augment
    import qkt_flower.data.datasets as datasets
    import qkt_flower.data.federation as federation
    import qkt_flower.data.idx as idx
    import qkt_flower.data.images as images
    import qkt_flower.data.loaders as loaders
    import qkt_flower.data.partition as partition
    import qkt_flower.data.query as query
    import qkt_flower.data.sources as sources
    import qkt_flower.experiments.threads as threads
    import qkt_flower.models as models
    import qkt_flower.models.cnn as cnn
    import qkt_flower.models.pooling as pooling
    import qkt_flower.models.resnet as resnet
    import qkt_flower.qkt.engine as engine
    import qkt_flower.qkt.local as local

    return (
        augment,
        datasets,
        federation,
        idx,
        images,
        loaders,
        partition,
        query,
        sources,
        models,
        cnn,
        pooling,
        resnet,
        engine,
        local,
        threads,
        client_seed,
        init_seed,
        train_client,
    )


def step0_recipe(cfg) -> dict:
    """The ``local`` options that shape a trained model (all but where it is cached)."""
    return {k: v for k, v in asdict(cfg.local).items() if k != "cache_dir"}


def local_model_key(cfg) -> str:
    """Hash of everything that determines the local models (data, partition, query cut, model, step 0, seed, code)."""
    return key_of(
        [
            asdict(cfg.dataset),
            asdict(cfg.partition),
            asdict(cfg.query),
            asdict(cfg.model),
            step0_recipe(cfg),
            cfg.seed,
            code_fingerprint(*local_training_code()),
        ]
    )


def client_model_key(cfg, fed: Federation, client: int) -> str:
    """Hash of what shapes one client's trained model: its own images (indices), model, step 0, seed, code.

    Keyed by the client's partition rather than the whole federation: another query class leaves the models of
    the clients it does not touch cached (a grid over queries retrains only the querying client and the donors
    of its shots).
    """
    indices = hashlib.sha256(fed.scenario.partitions[client].numpy().tobytes()).hexdigest()
    return key_of(
        [asdict(cfg.dataset), asdict(cfg.model), step0_recipe(cfg), cfg.seed, client, indices,
         code_fingerprint(*local_training_code())]
    )  # fmt: skip


def local_cache_file(cfg, fed: Federation, client: int) -> Path | None:
    """Where client ``client``'s trained model is cached (``None`` when ``local.cache_dir`` is off)."""
    root = local_models_dir(cfg.local.cache_dir)
    return None if root is None else root / client_model_key(cfg, fed, client) / "model.pt"


def samples_to_train(cfg, fed: Federation, client: int) -> int:
    """Samples step 0 will push through for ``client`` (0 if its model is cached)."""
    cache = local_cache_file(cfg, fed, client)
    return 0 if cache is not None and cache.is_file() else cfg.local.epochs * len(fed.scenario.partitions[client])


def answer_probe(cfg, model: nn.Module, input_shape: tuple[int, ...], device, client: int) -> torch.Tensor:
    """Teacher ``client``'s probe reply: mean softmax over the noise regenerated from the probe's seed.

    With ``strategy.probe.reply_noise`` the teacher's noise is added as a simulated node adds it (seeded by the
    run's seed and the client), so the reference runner and a simulation answer the same.
    """
    p = cfg.strategy.probe
    scores = probe_answer(
        model, tuple(input_shape), p.n, p.seed, p.kind, p.temperature, p.standardize, p.batch_size, device
    )
    return add_reply_noise(scores, p.reply_noise, (cfg.seed, client)) if p.reply_noise > 0 else scores


def true_profiles(cfg, fed: Federation, clients) -> dict[int, torch.Tensor]:
    """Each teacher's true class profile: classes that make up at least ``profile_min_share`` of its data."""
    out = {}
    for k in clients:
        counts = fed.class_counts(k).double()
        out[k] = counts / counts.sum().clamp_min(1) >= cfg.strategy.mask.profile_min_share
    return out


def choose_experts(
    cfg, scores: dict[int, torch.Tensor], query_classes: tuple[int, ...]
) -> tuple[dict[int, torch.Tensor], ExpertSelection]:
    """Masks of every teacher and the experts of each query class."""
    masks = cfg.strategy.mask.masks(scores)
    return masks, select_experts(masks, scores, query_classes, cfg.strategy.mask.max_experts)


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
    """The experts as query learning needs them, in teacher-id order."""
    return [Expert(models[k], q, known) for k, (q, known) in expert_classes(masks, selection).items()]


def query_task(fed: Federation) -> QueryTask:
    """The querying client's transfer set (its own training data) and class split."""
    s = fed.scenario
    return QueryTask(fed.client_data(s.client), s.query_classes, s.local_classes)


def learn_query(
    cfg,
    fed: Federation,
    local_model: nn.Module,
    experts: list[Expert],
    device,
    on_phase_end=None,
    method: MethodSpec | None = None,
):
    """``method`` (default: ``cfg.method``) on the querying client; returns ``(model, info)``."""
    with precision(cfg, torch.device(device)):
        return query_learning(
            local_model, query_task(fed), experts, method or cfg.method, cfg.seed, device, cfg.progress, on_phase_end
        )


def control_model(cfg, fed: Federation, local_model: nn.Module, device) -> nn.Module:
    """The class-balanced CE control of ``cfg.method`` (no teacher term; also the baselines' "+ FT")."""
    return learn_query(cfg, fed, local_model, [], device, method=cfg.method.without_teachers())[0]
