"""Baselines on the same Flower grid as QKT, after it: same nodes, partitions, local models and test view.

- one-round baselines (``baselines.one_round``): the server fetches *every* teacher's weights (QKT fetches
  only the experts') and ships them to the querying node, which builds the ensemble / vanilla-KD /
  FedDF models on its own data (:func:`qkt_flower.experiments.federated.one_round_baseline`);
- federated baselines (``baselines.federated``): Flower's own ``FedAvg`` and ``FedProx`` strategies from a
  fresh seeded model, every node training each round; after each round in ``baselines.eval_rounds`` the
  global model goes to the querying node for its test-view accuracy, and (``baselines.finetune``) again
  after fine-tuning it on that node's data ("FedAvg + FT").

Bytes are counted like QKT's: every payload both ways.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable

from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord
from flwr.serverapp import Grid
from flwr.serverapp.strategy import FedAvg, FedProx

from qkt_flower.experiments import federated
from qkt_flower.fl import records as R
from qkt_flower.fl.strategy import QKTStrategy

log = logging.getLogger(__name__)


def _nested(metrics: dict[str, float]) -> dict[str, dict[str, float]]:
    """``{"ensemble.query_acc": v}`` → ``{"ensemble": {"query_acc": v}}``."""
    out: dict[str, dict[str, float]] = {}
    for key, value in metrics.items():
        method, _, name = key.partition(".")
        out.setdefault(method, {})[name] = value
    return out


class _InClientOrder:
    """Aggregate the round's replies in client order, not arrival order.

    A weighted average is a float sum: its last bits depend on the order of the terms, and over several
    rounds those bits change the trained model. Sorting by client id makes the same seed give the same
    global model whichever node answers first.
    """

    client_of: dict[int, int] = {}

    def aggregate_train(self, server_round: int, replies: Iterable[Message]):
        ordered = sorted(replies, key=lambda m: self.client_of.get(m.metadata.src_node_id, 1 << 62))
        return super().aggregate_train(server_round, ordered)


class OrderedFedAvg(_InClientOrder, FedAvg):
    """Flower's FedAvg, aggregating in client order."""


class OrderedFedProx(_InClientOrder, FedProx):
    """Flower's FedProx, aggregating in client order."""


def run_one_round(qkt: QKTStrategy, grid: Grid) -> dict:
    """Ensemble, vanilla KD and FedDF from every teacher's weights; ``{method: metrics}`` plus bytes."""
    cfg = qkt.cfg
    query_client = cfg.query.client
    teachers = [k for k in qkt.node_of if k != query_client]
    arrays = qkt.fetch(grid, teachers, qkt.node_of, step="baselines.weights")
    spec = {"methods": list(cfg.baselines.one_round)}
    spec.update({f"{k}.size": int(qkt.info[k]["num-examples"]) for k in qkt.node_of})
    records = {f"{R.TEACHER_PREFIX}{k}": a for k, a in arrays.items()}
    records[R.BASELINE_SPEC] = ConfigRecord(spec)
    msg = qkt._message(qkt.node_of[query_client], R.BASELINES, **records)
    replies = qkt._exchange(grid, "baselines", [msg])
    if not replies:
        return {}
    results = _nested(dict(replies[0].content.metric_records[R.METRICS]))
    for name in results:
        results[name]["teachers"] = len(arrays)
    return results


def run_federated(qkt: QKTStrategy, grid: Grid, name: str) -> dict:
    """FedAvg or FedProx with Flower's strategy; metrics of the global model at each evaluation round."""
    cfg, b = qkt.cfg, qkt.cfg.baselines
    info = qkt.info[cfg.query.client]
    model = federated.initial_global_model(cfg, [int(v) for v in info["input-shape"]], int(info["num-classes"]))
    initial = ArrayRecord(model.state_dict())
    model_bytes = sum(len(a.data) for a in initial.values())
    nodes = len(qkt.node_of)
    common = {"fraction_train": 1.0, "fraction_evaluate": 0.0, "min_train_nodes": nodes, "min_available_nodes": nodes}
    strategy = OrderedFedProx(proximal_mu=b.fedprox_mu, **common) if name == "fedprox" else OrderedFedAvg(**common)
    strategy.client_of = dict(qkt.client_of)
    rounds: dict[int, dict] = {}

    def evaluate_fn(server_round: int, arrays: ArrayRecord) -> MetricRecord | None:
        if server_round not in b.eval_rounds:
            return None
        msg = qkt._message(qkt.node_of[cfg.query.client], R.EVALUATE, **{R.FL_ARRAYS: arrays})
        replies = qkt._exchange(grid, f"{name}.evaluate.{server_round}", [msg])
        if not replies:
            return None
        metrics = dict(replies[0].content.metric_records[R.METRICS])
        rounds[server_round] = {
            **_nested(metrics),
            "bytes": 2 * nodes * model_bytes * server_round,  # global model down + update up, every node, every round
        }
        return MetricRecord(metrics)

    train_config = ConfigRecord({R.FL_EXPERIMENT: qkt.node_yaml})
    start = time.perf_counter()
    strategy.start(grid, initial, num_rounds=b.rounds, timeout=qkt.timeout, train_config=train_config,
                   evaluate_fn=evaluate_fn)  # fmt: skip
    seconds = time.perf_counter() - start
    return {"rounds": rounds, "nodes": nodes, "model_bytes": model_bytes, "seconds": seconds}


def run_baselines(qkt: QKTStrategy, grid: Grid) -> dict:
    """Every configured baseline after a QKT run on ``grid``; the ``baselines`` entry of ``results.json``."""
    out: dict = {}
    if qkt.cfg.baselines.one_round:
        out["one_round"] = run_one_round(qkt, grid)
    for name in qkt.cfg.baselines.federated:
        out[name] = run_federated(qkt, grid, name)
    return out
