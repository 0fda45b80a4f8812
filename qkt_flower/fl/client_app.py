"""The QKT ClientApp: thin handlers that unpack a message, call ``qkt_flower.experiments.steps``, pack the reply.

A node's trained model lives in ``context.state`` (not in module globals). Its raw data never leaves
it: replies carry a model's weights (teachers only, on request), C probe scores, or aggregate metrics.
"""

from __future__ import annotations

import functools
import json
import logging
import os
import time
from dataclasses import asdict, replace

import torch
from flwr.app import ArrayRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from qkt_flower.config import ExperimentConfig
from qkt_flower.data.federation import Federation, build_federation
from qkt_flower.errors import ConfigError, DataError
from qkt_flower.experiments import federated, steps
from qkt_flower.fl import records as R
from qkt_flower.models import build_model
from qkt_flower.qkt.evaluate import evaluate_view
from qkt_flower.qkt.probe import probe_answer
from qkt_flower.qkt.task import Expert

app = ClientApp()
log = logging.getLogger(__name__)


class NodeError(RuntimeError):
    """A node's refusal or failure as the server is told it: a short code and a message written here.

    Flower puts an exception's text into the error reply; an arbitrary exception's text can hold the node's paths,
    environment or data, so every handler is :func:`guarded` and only this text leaves the node.
    """

    def __init__(self, code: str, message: str) -> None:
        self.code, self.message = code, message
        super().__init__(f"{code}: {message}")

    def __reduce__(self):
        return (NodeError, (self.code, self.message))


def guarded(handler):
    """``handler`` with every failure logged in full on the node and replied as a :class:`NodeError`."""

    @functools.wraps(handler)
    def wrapper(msg: Message, context: Context) -> Message:
        try:
            return handler(msg, context)
        except NodeError:
            raise
        except ConfigError as err:  # the key and what is allowed: both come from this code, not from the node
            log.error("%s: %s", handler.__name__, err)
            raise NodeError("config", f"{err.key} refused: {err.allowed}") from None
        except DataError as err:
            log.error("%s: %s", handler.__name__, err)
            raise NodeError("data", "this node's dataset files are missing or unreadable (see its log)") from None
        except Exception as err:
            log.exception("%s failed", handler.__name__)
            raise NodeError("internal", f"{type(err).__name__} in {handler.__name__} (see the node's log)") from None

    return wrapper


_FEDERATION: dict[str, Federation] = {}  # one entry: the federation of the current run, per process


def federation(cfg: ExperimentConfig) -> Federation:
    """The federation of ``cfg``, built once per process (loading and partitioning is the slow part).

    It is a pure function of the config, so a cache cannot leak state between runs with different configs.
    """
    key = json.dumps([asdict(cfg.dataset), asdict(cfg.partition), asdict(cfg.query), cfg.seed], sort_keys=True)
    if key not in _FEDERATION:
        _FEDERATION.clear()
        _FEDERATION[key] = build_federation(cfg.dataset, cfg.partition, cfg.query, cfg.seed, cfg.partition_cache)
    return _FEDERATION[key]


def on_this_node(cfg: ExperimentConfig, context: Context) -> ExperimentConfig:
    """The experiment as this node runs it: ``data-root`` in its node config points at its copy of the dataset.

    In deployment every SuperNode keeps its data on its own disk (``--node-config 'data-root="/data"'``),
    wherever that is; in simulation the node config has no such key and ``dataset.root`` holds.
    """
    root = context.node_config.get("data-root")
    if root is None or str(root) == cfg.dataset.root:
        return cfg
    return replace(cfg, dataset=replace(cfg.dataset, root=str(root)))  # the parsed config is shared: copy


def experiment(msg: Message, context: Context) -> ExperimentConfig:
    """The experiment a message carries, as this node runs it."""
    return on_this_node(R.unpack_experiment(msg.content), context)


def partition_id(context: Context) -> int:
    """Client index of this node (``partition-id`` in its node config)."""
    return int(context.node_config["partition-id"])


def local_model(cfg: ExperimentConfig, fed: Federation, context: Context) -> torch.nn.Module:
    """The trained model of this node, rebuilt from ``context.state``."""
    if R.LOCAL_MODEL not in context.state.array_records:
        raise NodeError("state", "this node has no trained model yet: a 'train' message must come first")
    model = build_model(cfg.model.name, fed.train.input_shape, fed.train.num_classes, seed=0)
    model.load_state_dict(R.state_dict_of(context.state.array_records[R.LOCAL_MODEL]))
    return model.eval()


def reply(msg: Message, **records) -> Message:
    """Reply to ``msg`` with the given records."""
    return Message(content=RecordDict(records), reply_to=msg)


@app.train()
@guarded
def train(msg: Message, context: Context) -> Message:
    """Step 0: train this node's model on its partition and keep it in ``context.state``.

    A message from Flower's FedAvg/FedProx (global ``arrays`` + ``config``) is a federated round instead.
    """
    if R.FL_ARRAYS in msg.content.array_records:
        return federated_round(msg, context)
    entered = time.time()  # wall clock: the server places this node's work on its own timeline (same machine)
    cfg = experiment(msg, context)
    fed = federation(cfg)
    k = partition_id(context)
    n = len(fed.scenario.partitions[k])
    samples, start = steps.samples_to_train(cfg, fed, k), time.perf_counter()
    model = steps.train_client(cfg, fed, k, steps.resolve_device(cfg.device))
    seconds = time.perf_counter() - start
    records = {}
    if R.PROBE_SPEC in msg.content.config_records and k != fed.scenario.client:  # the probe, answered right away
        records[R.PROBE_SCORES] = answer_probe(cfg, fed, model.eval(), msg.content.config_records[R.PROBE_SPEC])
    context.state[R.LOCAL_MODEL] = ArrayRecord(model.cpu().state_dict())
    metrics = {"num-examples": n, "client": k, "train-seconds": seconds, "train-samples": samples,
               "handler-start": entered, "handler-end": time.time(), "pid": os.getpid()}  # fmt: skip
    if k == fed.scenario.client:  # the querying node announces its query (the server holds no data)
        metrics.update({"query-classes": list(fed.scenario.query_classes), "num-classes": fed.train.num_classes,
                        "input-shape": list(fed.train.input_shape)})  # fmt: skip
    return reply(msg, **{R.METRICS: MetricRecord(metrics)}, **records)


def answer_probe(cfg: ExperimentConfig, fed: Federation, model: torch.nn.Module, spec) -> MetricRecord:
    """The probe answer of this node: its mean softmax over the noise regenerated from ``spec`` (C floats).

    An empty ``shape`` in the spec (a probe sent with the training message) means this node's input shape.
    """
    start = time.perf_counter()
    shape = tuple(int(v) for v in spec["shape"]) or tuple(fed.train.input_shape)
    batch_size = cfg.strategy.probe.batch_size  # local compute, not part of the probe's wire spec
    scores = probe_answer(model, shape, int(spec["n"]), int(spec["seed"]), str(spec["kind"]),
                          float(spec["temperature"]), bool(spec["standardize"]), batch_size,
                          steps.resolve_device(cfg.device))  # fmt: skip
    return R.pack_probe_reply(scores, shape, time.perf_counter() - start)


@app.query("probe")
@guarded
def probe(msg: Message, context: Context) -> Message:
    """Answer the noise probe on its own (a node that trained without it, or ``probe.with_training=false``)."""
    cfg = experiment(msg, context)
    fed = federation(cfg)
    record = answer_probe(cfg, fed, local_model(cfg, fed, context), msg.content.config_records[R.PROBE_SPEC])
    return reply(msg, **{R.PROBE_SCORES: record})


@app.query("weights")
@guarded
def weights(msg: Message, context: Context) -> Message:
    """Send this node's weights: it was found relevant to the query."""
    if R.LOCAL_MODEL not in context.state.array_records:
        raise NodeError("state", "this node has no trained model yet: a 'train' message must come first")
    return reply(msg, **{R.TEACHER_ARRAYS: context.state.array_records[R.LOCAL_MODEL]})


@app.train("qkt")
@guarded
@steps.every_core()  # only this node works in this step
def qkt(msg: Message, context: Context) -> Message:
    """On the querying node: learn the query classes from the experts, on its own data, and report metrics."""
    cfg = experiment(msg, context)
    fed = federation(cfg)
    if partition_id(context) != fed.scenario.client:
        raise NodeError("role", f"node {partition_id(context)} is not the querying client {fed.scenario.client}")
    device = steps.resolve_device(cfg.device)
    mine = local_model(cfg, fed, context)
    experts = []
    for k, (query, known) in R.unpack_masks(msg.content.config_records[R.EXPERT_MASKS]).items():
        teacher = build_model(cfg.model.name, fed.train.input_shape, fed.train.num_classes, seed=0)
        teacher.load_state_dict(R.state_dict_of(msg.content.array_records[f"{R.EXPERT_ARRAYS}{k}"]))
        experts.append(Expert(teacher.eval(), query, known))
    student, info = steps.learn_query(cfg, fed, mine, experts, device)
    view = fed.test_view()
    s = fed.scenario
    metrics = {
        **R.flat_metrics("before", evaluate_view(mine, view, s.query_classes, s.local_classes, device=device)),
        **R.flat_metrics("after", evaluate_view(student, view, s.query_classes, s.local_classes, device=device)),
        **{f"seconds.{k}": float(v) for k, v in info["seconds"].items()},
        "calibration_shift": float(info["calibration_shift"]),
        "num-examples": len(fed.scenario.partitions[s.client]),
    }
    if cfg.control and cfg.method.teachers:  # the class-balanced CE control: the same recipe, no teacher term
        metrics.update(_view_metrics("control", steps.control_model(cfg, fed, mine, device), fed, device))
    return reply(msg, **{R.METRICS: MetricRecord(metrics)})


def _model_from(cfg: ExperimentConfig, fed: Federation, record: ArrayRecord) -> torch.nn.Module:
    model = build_model(cfg.model.name, fed.train.input_shape, fed.train.num_classes, seed=0)
    model.load_state_dict(R.state_dict_of(record))
    return model.eval()


def federated_round(msg: Message, context: Context) -> Message:
    """A FedAvg (or FedProx, with ``proximal-mu`` in the config) round: train the global model on this partition."""
    config = msg.content.config_records[R.FL_CONFIG]
    cfg = on_this_node(R.experiment_from_yaml(str(config[R.FL_EXPERIMENT])), context)
    fed = federation(cfg)
    k = partition_id(context)
    model = _model_from(cfg, fed, msg.content.array_records[R.FL_ARRAYS])
    mu = float(config["proximal-mu"]) if "proximal-mu" in config else 0.0
    model = federated.federated_round(
        cfg, fed, k, model, int(config["server-round"]), mu, steps.resolve_device(cfg.device)
    )
    metrics = MetricRecord({"num-examples": len(fed.scenario.partitions[k])})
    return reply(msg, **{R.FL_ARRAYS: ArrayRecord(model.cpu().state_dict()), R.METRICS: metrics})


def _view_metrics(prefix: str, model: torch.nn.Module, fed: Federation, device) -> dict[str, float]:
    s = fed.scenario
    return R.flat_metrics(
        prefix, evaluate_view(model, fed.test_view(), s.query_classes, s.local_classes, device=device)
    )


@app.train("baselines")
@guarded
@steps.every_core()  # only this node works in this step
def baselines(msg: Message, context: Context) -> Message:
    """On the querying node: the one-round baselines from every teacher's weights, on its own data."""
    cfg = experiment(msg, context)
    fed = federation(cfg)
    if partition_id(context) != fed.scenario.client:
        raise NodeError("role", f"node {partition_id(context)} is not the querying client {fed.scenario.client}")
    device = steps.resolve_device(cfg.device)
    spec = msg.content.config_records[R.BASELINE_SPEC]
    teachers = {
        int(key.removeprefix(R.TEACHER_PREFIX)): _model_from(cfg, fed, record)
        for key, record in msg.content.array_records.items()
        if key.startswith(R.TEACHER_PREFIX)
    }
    sizes = {int(key.split(".")[0]): int(v) for key, v in spec.items() if key.endswith(".size")}
    mine = local_model(cfg, fed, context)
    metrics: dict[str, float] = {}
    for name in spec["methods"]:
        start = time.perf_counter()
        model = federated.one_round_baseline(cfg, fed, str(name), mine, teachers, sizes, device)
        metrics[f"{name}.seconds"] = time.perf_counter() - start
        metrics.update(_view_metrics(str(name), model, fed, device))
    return reply(msg, **{R.METRICS: MetricRecord(metrics)})


@app.query("evaluate")
@guarded
@steps.every_core()  # only this node works in this step
def evaluate_global(msg: Message, context: Context) -> Message:
    """On the querying node: test-view accuracy of a global model, and after fine-tuning it on its own data."""
    cfg = experiment(msg, context)
    fed = federation(cfg)
    device = steps.resolve_device(cfg.device)
    model = _model_from(cfg, fed, msg.content.array_records[R.FL_ARRAYS])
    metrics = _view_metrics("global", model, fed, device)
    if cfg.baselines.finetune:
        metrics.update(_view_metrics("finetuned", steps.control_model(cfg, fed, model, device), fed, device))
    return reply(msg, **{R.METRICS: MetricRecord(metrics)})
