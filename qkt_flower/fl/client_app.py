"""The QKT ClientApp: thin handlers that unpack a message, call ``qkt_flower.experiments.steps``, pack the reply.

A node's trained model lives in ``context.state`` (not in module globals). Its raw data never leaves
it: replies carry a model's weights (teachers only, on request), C probe scores, or aggregate metrics.
A message says what to run; the node decides where its files are and how much work it accepts
(:mod:`qkt_flower.fl.node`): its paths never come from a message.
"""

from __future__ import annotations

import functools
import logging
import os
import time

import torch
from flwr.app import ArrayRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from qkt_flower.config import ExperimentConfig
from qkt_flower.data.federation import Federation
from qkt_flower.experiments import federated, steps
from qkt_flower.experiments.threads import every_core
from qkt_flower.fl import records as R
from qkt_flower.fl.guard import NodeError, guarded
from qkt_flower.fl.node import LimitError, NodeSettings
from qkt_flower.fl.node_state import (
    federation,
    indexed_record,
    keep_model,
    local_model,
    model_from,
    model_key,
    remember_models,
)
from qkt_flower.qkt.evaluate import evaluate_view
from qkt_flower.qkt.probe import add_reply_noise, probe_answer
from qkt_flower.qkt.task import Expert

log = logging.getLogger(__name__)


def settings(context: Context, defaults: NodeSettings | None = None) -> NodeSettings:
    """The node's settings: its node config over ``defaults`` (the app's, else ``QKT_NODE_CONFIG``, else built in)."""
    return NodeSettings.from_node_config(context.node_config, defaults or NodeSettings.from_environment())


def experiment(msg: Message, context: Context, defaults: NodeSettings | None = None) -> ExperimentConfig:
    """The experiment a message carries, as this node runs it: its own paths, within its limits."""
    return settings(context, defaults).run(R.unpack_experiment(msg.content))


def partition_id(context: Context) -> int:
    """Client index of this node (``partition-id`` in its node config)."""
    return int(context.node_config["partition-id"])


def reply(msg: Message, **records) -> Message:
    """Reply to ``msg`` with the given records."""
    return Message(content=RecordDict(records), reply_to=msg)


@guarded
def train(msg: Message, context: Context, defaults: NodeSettings | None = None) -> Message:
    """Step 0: train this node's model on its partition and keep it in ``context.state``.

    With several querying clients a querier's cut may change this node's partition: it trains one model per
    distinct partition (``models``: which one each querier meets) and answers the probe with each that some
    querier meets as a teacher. A message from Flower's FedAvg/FedProx (global ``arrays`` + ``config``) is a
    federated round instead.
    """
    node = settings(context, defaults)
    if R.FL_ARRAYS in msg.content.array_records:
        return federated_round(msg, context, node)
    entered = time.time()  # wall clock: the server places this node's work on its own timeline (same machine)
    cfg = node.run(R.unpack_experiment(msg.content))
    k, queriers = partition_id(context), cfg.queriers()
    feds = [federation(cfg.alone(q)) for q in queriers]
    node.check_model(cfg.model.name, tuple(feds[0].train.input_shape), feds[0].train.num_classes)
    first: dict[str, int] = {}  # partition fingerprint -> the first querier whose federation gives it
    models = []  # per querier: which of this node's models it meets
    for i, fed in enumerate(feds):
        first.setdefault(fed.partition_key(k), i)
        models.append(list(first).index(fed.partition_key(k)))
    records, samples, seconds = {}, 0, 0.0
    for j, i in enumerate(first.values()):
        view, fed = cfg.alone(queriers[i]), feds[i]
        samples, start = samples + steps.samples_to_train(view, fed, k), time.perf_counter()
        model = steps.train_client(view, fed, k, steps.resolve_device(cfg.device)).eval()
        seconds += time.perf_counter() - start
        teacher = any(
            m == j and q != k for m, q in zip(models, queriers, strict=True)
        )  # some querier meets it as a teacher
        if R.PROBE_SPEC in msg.content.config_records and teacher and node.probe:  # the probe, answered right away
            spec = msg.content.config_records[R.PROBE_SPEC]
            records[R.probe_scores_key(j)] = answer_probe(view, fed, model, spec, node, k)
        keep_model(context, fed, k, model, steps.local_cache_file(view, fed, k))
    remember_models(context, [model_key(feds[i], k) for i in first.values()])
    metrics = {"num-examples": len(feds[0].scenario.partitions[k]), "client": k, "train-seconds": seconds,
               "train-samples": samples, "handler-start": entered, "handler-end": time.time(), "pid": os.getpid(),
               "answers-probe": int(node.probe), "models": models}  # fmt: skip
    if k in queriers:  # a querying node announces its query (the server holds no data)
        fed = feds[queriers.index(k)]
        metrics.update({"query-classes": list(fed.scenario.query_classes), "num-classes": fed.train.num_classes,
                        "input-shape": list(fed.train.input_shape)})  # fmt: skip
    return reply(msg, **{R.METRICS: MetricRecord(metrics)}, **records)


def answer_probe(cfg: ExperimentConfig, fed: Federation, model: torch.nn.Module, spec, node: NodeSettings,
                 client: int) -> MetricRecord:  # fmt: skip
    """The probe answer of this node: its mean softmax over the noise regenerated from ``spec`` (C floats).

    An empty ``shape`` in the spec (a probe sent with the training message) means this node's input shape; any
    other shape must be it. With ``reply_noise`` > 0 the node adds Gaussian noise of that scale to its scores
    (from its ``noise-seed``, else fresh randomness), so its answer reveals less of its class profile. Callers
    ask only a node that answers the probe (``probe`` in its settings).
    """
    start = time.perf_counter()
    probe = R.unpack_probe(spec)
    shape = probe["shape"] or tuple(fed.train.input_shape)
    if shape != tuple(fed.train.input_shape):
        raise LimitError(f"a probe of shape {list(shape)} is not this node's input shape {fed.train.input_shape}")
    node.check_probe_n(probe["n"])
    batch_size = cfg.strategy.probe.batch_size  # local compute, not part of the probe's wire spec
    scores = probe_answer(model, shape, probe["n"], probe["seed"], probe["kind"], probe["temperature"],
                          probe["standardize"], batch_size, steps.resolve_device(cfg.device))  # fmt: skip
    if probe["reply_noise"] > 0:
        seed = None if node.noise_seed is None else (node.noise_seed, client)
        scores = add_reply_noise(scores, probe["reply_noise"], seed)
    return R.pack_probe_reply(scores, shape, time.perf_counter() - start)


@guarded
def probe(msg: Message, context: Context, defaults: NodeSettings | None = None) -> Message:
    """Answer the noise probe on its own (a node that trained without it, or ``probe.with_training=false``)."""
    node = settings(context, defaults)
    if not node.probe:  # before reading anything of the message
        raise NodeError("refused", "this node does not answer the noise probe (its node config)")
    cfg = node.run(R.unpack_experiment(msg.content))
    fed = federation(cfg)
    model = local_model(cfg, fed, context, partition_id(context))
    record = answer_probe(cfg, fed, model, msg.content.config_records[R.PROBE_SPEC], node, partition_id(context))
    return reply(msg, **{R.PROBE_SCORES: record})


@guarded
def weights(msg: Message, context: Context, defaults: NodeSettings | None = None) -> Message:
    """Send this node's weights (the model the message names, 0 = its only one): it was found relevant."""
    index = msg.content.config_records[R.MODEL].get("index") if R.MODEL in msg.content.config_records else 0
    return reply(msg, **{R.TEACHER_ARRAYS: indexed_record(context, index)})


def querying_node(fed: Federation, context: Context) -> None:
    """Refuse a step that only the querying node runs."""
    if partition_id(context) != fed.scenario.client:
        raise NodeError("role", f"node {partition_id(context)} is not the querying client {fed.scenario.client}")


@guarded
@every_core()  # only this node works in this step
def qkt(msg: Message, context: Context, defaults: NodeSettings | None = None) -> Message:
    """On the querying node: learn the query classes from the experts, on its own data, and report metrics."""
    cfg = experiment(msg, context, defaults)
    fed = federation(cfg)
    querying_node(fed, context)
    device = steps.resolve_device(cfg.device)
    mine = local_model(cfg, fed, context, partition_id(context))
    experts, classes = [], range(fed.train.num_classes)
    for k, (query, known) in R.unpack_masks(msg.content.config_records[R.EXPERT_MASKS]).items():
        if not set(query) <= set(fed.scenario.query_classes) or not set(known) <= set(classes):
            raise NodeError("config", f"expert {k}'s mask names classes outside the query / the label space")
        record = msg.content.array_records.get(f"{R.EXPERT_ARRAYS}{k}")
        if record is None:
            raise NodeError("config", f"expert {k} has a mask but no weights in the message")
        experts.append(Expert(model_from(cfg, fed, record, f"expert {k}'s weights"), query, known))
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


def federated_round(msg: Message, context: Context, node: NodeSettings) -> Message:
    """A FedAvg (or FedProx, with ``proximal-mu`` in the config) round: train the global model on this partition."""
    config = msg.content.config_records[R.FL_CONFIG]
    cfg = node.run(R.experiment_from_yaml(str(config[R.FL_EXPERIMENT])))
    fed = federation(cfg)
    node.check_model(cfg.model.name, tuple(fed.train.input_shape), fed.train.num_classes)
    k = partition_id(context)
    model = model_from(cfg, fed, msg.content.array_records[R.FL_ARRAYS], "the global model")
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


@guarded
@every_core()  # only this node works in this step
def baselines(msg: Message, context: Context, defaults: NodeSettings | None = None) -> Message:
    """On the querying node: the one-round baselines from every teacher's weights, on its own data."""
    cfg = experiment(msg, context, defaults)
    fed = federation(cfg)
    querying_node(fed, context)
    device = steps.resolve_device(cfg.device)
    spec = msg.content.config_records[R.BASELINE_SPEC]
    teachers = {
        int(key.removeprefix(R.TEACHER_PREFIX)): model_from(cfg, fed, record, f"teacher {key}")
        for key, record in msg.content.array_records.items()
        if key.startswith(R.TEACHER_PREFIX)
    }
    sizes = {int(key.split(".")[0]): int(v) for key, v in spec.items() if key.endswith(".size")}
    mine = local_model(cfg, fed, context, partition_id(context))
    metrics: dict[str, float] = {}
    for name in spec["methods"]:
        start = time.perf_counter()
        model = federated.one_round_baseline(cfg, fed, str(name), mine, teachers, sizes, device)
        metrics[f"{name}.seconds"] = time.perf_counter() - start
        metrics.update(_view_metrics(str(name), model, fed, device))
    return reply(msg, **{R.METRICS: MetricRecord(metrics)})


@guarded
@every_core()  # only this node works in this step
def evaluate_global(msg: Message, context: Context, defaults: NodeSettings | None = None) -> Message:
    """On the querying node: test-view accuracy of a global model, and after fine-tuning it on its own data."""
    cfg = experiment(msg, context, defaults)
    fed = federation(cfg)
    device = steps.resolve_device(cfg.device)
    model = model_from(cfg, fed, msg.content.array_records[R.FL_ARRAYS], "the global model")
    metrics = _view_metrics("global", model, fed, device)
    if cfg.baselines.finetune:
        metrics.update(_view_metrics("finetuned", steps.control_model(cfg, fed, model, device), fed, device))
    return reply(msg, **{R.METRICS: MetricRecord(metrics)})


HANDLERS = {
    ("train", None): train, ("query", "probe"): probe, ("query", "weights"): weights, ("train", "qkt"): qkt,
    ("train", "baselines"): baselines, ("query", "evaluate"): evaluate_global,
}  # fmt: skip


def make_client_app(defaults: NodeSettings | None = None) -> ClientApp:
    """The QKT ClientApp; ``defaults``: the nodes' settings where their node config is silent.

    A deployed node gets the module's ``app`` (built-in defaults, or ``QKT_NODE_CONFIG`` in its environment);
    the simulation runtime builds one with the user's paths (:func:`~qkt_flower.fl.node.simulation_defaults`).
    """
    client = ClientApp()
    for (kind, action), handler in HANDLERS.items():
        register = getattr(client, kind)(action) if action else getattr(client, kind)()
        register(_bind(handler, defaults))
    return client


def _bind(handler, defaults: NodeSettings | None):
    @functools.wraps(handler)
    def call(msg: Message, context: Context) -> Message:
        return handler(msg, context, defaults)

    return call


app = make_client_app()
