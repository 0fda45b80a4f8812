"""What a node keeps between the messages of a run: the run's federations and its trained models.

A run with several querying clients (``query.clients``) is, for every node, several federations over one loaded
split: each querier's cut can change the node's partition (the querier's own shots, or shots moved from it).
The node trains one model per distinct partition and finds the right one for a message from the federation
its experiment describes, so each querier meets exactly the models of its run alone.
"""

from __future__ import annotations

import json
import pickle
from dataclasses import asdict
from pathlib import Path

import torch
from flwr.app import ArrayRecord, ConfigRecord, Context

from qkt_flower.config import ExperimentConfig
from qkt_flower.data.federation import Federation, Split, load_split
from qkt_flower.fl import records as R
from qkt_flower.fl.guard import NodeError
from qkt_flower.models import build_model
from qkt_flower.qkt.probe import check_weights

_SPLIT: dict[str, Split] = {}  # one entry: the loaded split of the current run, per process
_FEDERATION: dict[str, Federation] = {}  # the current split's federations, one per query
MAX_FEDERATIONS = 64  # queries one process keeps cut (a long-lived node sees many runs)


def federation(cfg: ExperimentConfig) -> Federation:
    """The federation of ``cfg`` (one querier), loaded and partitioned once per process, cut once per query.

    It is a pure function of the config, so a cache cannot leak state between runs with different configs.
    """
    data = json.dumps([asdict(cfg.dataset), asdict(cfg.partition), cfg.seed, cfg.partition_cache], sort_keys=True)
    key = json.dumps([data, asdict(cfg.query)], sort_keys=True)
    if key not in _FEDERATION:
        if data not in _SPLIT or len(_FEDERATION) >= MAX_FEDERATIONS:
            _SPLIT.clear()
            _FEDERATION.clear()
            _SPLIT[data] = load_split(cfg.dataset, cfg.partition, cfg.query, cfg.seed, cfg.partition_cache)
        _FEDERATION[key] = _SPLIT[data].cut(cfg.query, cfg.seed)
    return _FEDERATION[key]


def model_key(fed: Federation, client: int) -> str:
    """Where ``client``'s model for ``fed`` lives in ``context.state``: keyed by its partition."""
    return f"{R.LOCAL_MODEL}.{fed.partition_key(client)}"


def keep_model(
    context: Context, fed: Federation, client: int, model: torch.nn.Module, file: Path | None = None
) -> None:
    """Keep ``model`` (trained on ``client``'s partition in ``fed``) in ``context.state``.

    When the model is in the node's cache folder (``file``), the state keeps only where: a simulation holds every
    node's context in memory, and 10,000 small CNNs would take 17 GB there (``docs/PERFORMANCE.md#scaling``).
    """
    if file is not None and file.is_file():
        context.state[model_key(fed, client)] = ConfigRecord({"file": str(file)})
    else:
        context.state[model_key(fed, client)] = ArrayRecord(model.cpu().state_dict())


def _stored(context: Context, key: str) -> ArrayRecord | None:
    """The model kept under ``key``: its arrays, or loaded from the cache file the state names; ``None`` if none."""
    if key in context.state.array_records:
        return context.state.array_records[key]
    if key not in context.state.config_records:
        return None
    file = Path(str(context.state.config_records[key]["file"]))
    try:
        return ArrayRecord(torch.load(file, map_location="cpu", weights_only=True))
    except (OSError, RuntimeError, ValueError, EOFError, pickle.UnpicklingError):
        raise NodeError("state", "this node's trained model left its cache folder: a 'train' message must come "
                        "first") from None  # fmt: skip


def remember_models(context: Context, keys: list[str]) -> None:
    """Record the order of this node's models (the indices its train reply's ``models`` refer to)."""
    context.state[R.LOCAL_MODELS] = ConfigRecord({"keys": list(keys)})


def indexed_record(context: Context, index) -> ArrayRecord:
    """The node's ``index``-th model (a weights message names it: no data needs loading to answer)."""
    require_models(context)
    records = context.state.config_records
    keys = list(records[R.LOCAL_MODELS]["keys"]) if R.LOCAL_MODELS in records else []
    if isinstance(index, bool) or not isinstance(index, int) or not 0 <= index < len(keys):
        raise NodeError("config", f"model index {index!r}: this node holds {len(keys)} model(s)")
    record = _stored(context, keys[index])
    if record is None:
        raise NodeError("state", "this node has no trained model yet: a 'train' message must come first")
    return record


def require_models(context: Context) -> None:
    """Refuse a step that needs a trained model on a node that has none (before reading its data)."""
    prefix = f"{R.LOCAL_MODEL}."
    if not any(key.startswith(prefix) for key in [*context.state.array_records, *context.state.config_records]):
        raise NodeError("state", "this node has no trained model yet: a 'train' message must come first")


def local_record(fed: Federation, context: Context, client: int) -> ArrayRecord:
    """The weights this node trained on its partition in ``fed``; refused if it never did."""
    record = _stored(context, model_key(fed, client))
    if record is None:
        raise NodeError("state", "this node has no trained model for this query yet: a 'train' message must come first")
    return record


def local_model(cfg: ExperimentConfig, fed: Federation, context: Context, client: int) -> torch.nn.Module:
    """The trained model of this node for ``fed``, rebuilt from ``context.state``."""
    return model_from(cfg, fed, local_record(fed, context, client), "this node's trained model")


def model_from(cfg: ExperimentConfig, fed: Federation, record: ArrayRecord, what: str = "a model") -> torch.nn.Module:
    """The agreed model with ``record``'s weights; weights of another shape or with NaN are refused."""
    model = build_model(cfg.model.name, fed.train.input_shape, fed.train.num_classes, seed=0)
    try:
        state = R.state_dict_of(record)
    except (ValueError, TypeError, RuntimeError):
        raise NodeError("config", f"{what}: arrays that do not decode") from None
    reason = check_weights(state, {k: v.shape for k, v in model.state_dict().items()})
    if reason is not None:
        raise NodeError("config", f"{what}: {reason}")
    model.load_state_dict(state)
    return model.eval()
