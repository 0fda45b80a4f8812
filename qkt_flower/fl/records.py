"""Record keys of every QKT message, defined once, and the helpers that pack and unpack them.

Message types: ``train`` (step 0; with a probe spec, the reply carries the probe answer), ``query.probe``
(noise probe: seed, shape, count — never tensors),
``query.weights`` (a relevant teacher's weights), ``train.qkt`` (experts + masks to the querying node).
"""

from __future__ import annotations

import functools

import torch
import yaml
from flwr.app import ArrayRecord, ConfigRecord, MetricRecord, RecordDict
from omegaconf import OmegaConf

from qkt_flower.config import ExperimentConfig, check_plain, to_config
from qkt_flower.errors import ConfigError
from qkt_flower.qkt.probe import ProbeSpec

# message types
TRAIN = "train"
PROBE = "query.probe"
WEIGHTS = "query.weights"
QKT = "train.qkt"
BASELINES = "train.baselines"  # every teacher's weights to the querying node: one-round baselines
EVALUATE = "query.evaluate"  # a global model to the querying node: test-view accuracy (and after fine-tuning)

# record keys
EXPERIMENT = "experiment"  # ConfigRecord {"yaml": resolved experiment config}
PROBE_SPEC = "probe"  # ConfigRecord {seed, shape, n, kind, temperature, standardize}
PROBE_SCORES = "probe-scores"  # MetricRecord {"scores": C floats, "shape": noise shape, "seconds": compute}
# (a node holding several models, one per querier whose cut changed its partition: "probe-scores.<j>" for j >= 1)
TEACHER_ARRAYS = "teacher-arrays"  # ArrayRecord of one teacher (reply to query.weights)
EXPERT_ARRAYS = "expert-arrays."  # prefix + teacher id, in the train.qkt message
EXPERT_MASKS = "expert-masks"  # ConfigRecord {"<id>.query": [..], "<id>.known": [..]}
METRICS = "metrics"  # MetricRecord of a reply
LOCAL_MODEL = "local-model"  # prefix + partition fingerprint: the node's model in context.state (ArrayRecord, or
# ConfigRecord {"file": ...} naming it in the node's cache folder)
LOCAL_MODELS = "local-models"  # ConfigRecord {"keys": the LOCAL_MODEL keys, in the order train replies index them}
MODEL = "model"  # ConfigRecord {"index": j}: which of a node's models a query.weights message asks for (default 0)
TEACHER_PREFIX = "teacher-arrays."  # prefix + client id, in the train.baselines message
BASELINE_SPEC = "baselines"  # ConfigRecord {"methods": [..], "<id>.size": n} (sizes from the train replies)
# Flower's FedAvg/FedProx messages: {"arrays": ArrayRecord, "config": ConfigRecord}; the experiment rides along
FL_ARRAYS, FL_CONFIG, FL_EXPERIMENT = "arrays", "config", "experiment-yaml"


SERVER_ONLY = ("checkpoint_dir", "resume", "overwrite", "partition_cache", "simulation")  # and the paths below


def node_view(cfg_yaml: str) -> str:
    """The experiment as the nodes get it: what to run, without the server's own keys and paths.

    A node takes its data root and caches from its own settings (:mod:`qkt_flower.fl.node`), so the server's
    ``dataset.root``, ``local.cache_dir`` and checkpoint keys never travel.
    """
    tree = yaml.safe_load(cfg_yaml)
    for key in SERVER_ONLY:
        tree.pop(key, None)
    tree.get("dataset", {}).pop("root", None)
    tree.get("local", {}).pop("cache_dir", None)
    return yaml.safe_dump(tree, sort_keys=False)


def querier_view(node_yaml: str, client: int) -> str:
    """The experiment of one querying client as if it ran alone (``query.client`` = ``client``, no ``clients``)."""
    tree = yaml.safe_load(node_yaml)
    tree["query"] = {**tree.get("query", {}), "client": client, "clients": None}
    return yaml.safe_dump(tree, sort_keys=False)


def probe_scores_key(model: int) -> str:
    """Record key of the probe answer of a node's ``model``-th model (0: its only one, in a single-querier run)."""
    return PROBE_SCORES if model == 0 else f"{PROBE_SCORES}.{model}"


def pack_experiment(cfg_yaml: str) -> ConfigRecord:
    """The resolved experiment config, as YAML text (clients rebuild the same federation from it)."""
    return ConfigRecord({"yaml": cfg_yaml})


def unpack_experiment(content: RecordDict) -> ExperimentConfig:
    """Typed, validated config from a message."""
    return experiment_from_yaml(str(content.config_records[EXPERIMENT]["yaml"]))


@functools.lru_cache(maxsize=8)
def experiment_from_yaml(text: str) -> ExperimentConfig:
    """Typed, validated config from the resolved YAML a message carries, read as plain values.

    The text is parsed by ``yaml.safe_load`` (no tags, no objects) and refused if any value holds an interpolation
    (:func:`~qkt_flower.config.check_plain`): a node never resolves ``${...}`` with its own environment. Every
    message carries the same YAML and parsing it costs ~40 ms, which at thousands of messages is most of a probe's
    cost: the result (never mutated) is cached per text.
    """
    try:
        tree = yaml.safe_load(text)
    except yaml.YAMLError as err:
        raise ConfigError("experiment", "(the message's YAML)", f"plain YAML ({type(err).__name__})") from None
    if not isinstance(tree, dict):
        raise ConfigError("experiment", type(tree).__name__, "a mapping of config groups")
    check_plain(tree)
    return to_config(OmegaConf.create(tree))


def pack_probe(cfg: ExperimentConfig, shape: tuple[int, ...] | None) -> ConfigRecord:
    """What a teacher needs to regenerate the probe: a seed, a shape and a count (no tensors).

    ``shape=None`` (the probe sent with the training message, before the server knows the input shape):
    the node uses its own input shape and says which in its reply (:func:`pack_probe_reply`).
    """
    p = cfg.strategy.probe
    return ConfigRecord(
        {"seed": p.seed, "shape": list(shape or ()), "n": p.n, "kind": p.kind, "temperature": p.temperature,
         "standardize": p.standardize, "reply_noise": p.reply_noise}
    )  # fmt: skip


PROBE_FIELDS = {"seed": int, "n": int, "kind": str, "temperature": float, "standardize": bool}


def unpack_probe(record: ConfigRecord) -> dict:
    """A probe spec as typed values, checked as the server's config is (:class:`ConfigError` naming the key)."""
    out = {}
    for key, kind in PROBE_FIELDS.items():
        value = record.get(key)
        if value is None or (kind is not bool and isinstance(value, bool)) or not isinstance(value, kind | int):
            raise ConfigError(f"probe.{key}", type(value).__name__, f"a {kind.__name__} in the probe spec")
        out[key] = kind(value)
    shape = record.get("shape", [])
    if not isinstance(shape, list) or len(shape) > 3 or not all(isinstance(v, int) and v >= 1 for v in shape):
        raise ConfigError("probe.shape", type(shape).__name__, "up to three positive integers (C, H, W)")
    out["shape"] = tuple(shape)
    noise = record.get("reply_noise", 0.0)
    if isinstance(noise, bool) or not isinstance(noise, int | float) or not noise >= 0:
        raise ConfigError("probe.reply_noise", type(noise).__name__, "a float >= 0")
    out["reply_noise"] = float(noise)
    try:
        ProbeSpec(n=out["n"], kind=out["kind"], temperature=out["temperature"]).check()
    except ConfigError as err:
        raise err.under("probe") from None
    return out


def pack_probe_reply(scores: torch.Tensor, shape: tuple[int, ...], seconds: float) -> MetricRecord:
    """A teacher's probe answer: C scores, the input shape of the noise it used, its compute seconds."""
    return MetricRecord({"scores": scores.tolist(), "shape": list(shape), "seconds": float(seconds)})


def state_dict_of(record: ArrayRecord) -> dict[str, torch.Tensor]:
    """PyTorch state dict of an ArrayRecord."""
    return record.to_torch_state_dict()


def pack_masks(experts: dict[int, tuple[tuple[int, ...], tuple[int, ...]]]) -> ConfigRecord:
    """Per expert: the query classes it teaches and the classes its mask knows (the gate)."""
    record = {}
    for k, (query, known) in experts.items():
        record[f"{k}.query"] = list(query)
        record[f"{k}.known"] = list(known)
    return ConfigRecord(record)


def unpack_masks(record: ConfigRecord) -> dict[int, tuple[tuple[int, ...], tuple[int, ...]]]:
    """Inverse of :func:`pack_masks`."""
    ids = sorted({int(key.split(".")[0]) for key in record})
    return {k: (tuple(record[f"{k}.query"]), tuple(record[f"{k}.known"])) for k in ids}


def payload_bytes(content: RecordDict) -> int:
    """Bytes of a message's payload: array data plus serialised config/metric records."""
    total = 0
    for record in content.array_records.values():
        total += sum(len(arr.data) for arr in record.values())
    for record in [*content.config_records.values(), *content.metric_records.values()]:
        total += len(record.deflate())
    return total


def flat_metrics(prefix: str, report: dict) -> dict[str, float]:
    """``{prefix.key: value}`` of an accuracy report; per-class ones as ``prefix.per_class_acc.<c>``.

    The server turns them back into the report's shape (:func:`qkt_flower.results.nest_metrics`).
    """
    flat = {f"{prefix}.{k}": float(v) for k, v in report.items() if isinstance(v, int | float)}
    flat.update({f"{prefix}.per_class_acc.{c}": float(v) for c, v in report.get("per_class_acc", {}).items()})
    return flat


__all__ = [
    "TRAIN", "PROBE", "WEIGHTS", "QKT", "EXPERIMENT", "PROBE_SPEC", "PROBE_SCORES", "TEACHER_ARRAYS",
    "EXPERT_ARRAYS", "EXPERT_MASKS", "METRICS", "LOCAL_MODEL", "MetricRecord",
]  # fmt: skip
