"""The QKT strategy: one round of a different protocol from FedAvg's, driven over a Flower ``Grid``.

QKT is not a train/aggregate loop, so this class does not subclass Flower's round-based ``Strategy``
(whose ``start`` would have to be rewritten); it sequences four message exchanges instead, each a
small method: local training → noise probe of every teacher → data-free masking (here, on the
server) → weights of the relevant experts only → query learning on the querying node. Every step
tolerates nodes that fail or time out: it uses the answers that came back and records the rest.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable

import torch
from flwr.serverapp import Grid
from tqdm.auto import tqdm

from qkt_flower.config import ExperimentConfig
from qkt_flower.experiments import steps
from qkt_flower.fl import records as R
from qkt_flower.fl.checkpoint import Checkpoint
from qkt_flower.fl.exchange import Exchange
from qkt_flower.fl.timeline import train_step_timeline
from qkt_flower.models import build_model
from qkt_flower.qkt.probe import check_probe_reply, check_weights

log = logging.getLogger(__name__)


class QKTStrategy(Exchange):
    """Drive one QKT query over the nodes of a grid.

    Parameters
    ----------
    cfg, cfg_yaml
        The experiment, typed and as resolved YAML (shipped to the nodes, which rebuild their data from it).
    timeout
        Seconds to wait for the replies of one step.
    connect_timeout
        Seconds to wait for all ``partition.num_clients`` nodes to connect before starting with those present.
    checkpoint
        Where finished steps are recorded, and read back with ``resume=true`` (the probe's scores and the
        QKT metrics; training is skipped by the nodes themselves, which find their models on disk).
    """

    def __init__(
        self,
        cfg: ExperimentConfig,
        cfg_yaml: str,
        timeout: float = 3600.0,
        connect_timeout: float = 300.0,
        checkpoint: Checkpoint | None = None,
    ) -> None:
        super().__init__(cfg, cfg_yaml, timeout, connect_timeout)
        self.checkpoint = checkpoint or Checkpoint(None, cfg_yaml, False)
        self.resumed: list[str] = []  # steps taken from the checkpoint instead of run
        self.info: dict[int, dict] = {}  # client id -> its train reply (num-classes, input-shape, query-classes)
        self.node_of: dict[int, int] = {}  # client id -> node id, of the nodes that trained
        self.expected_shapes: dict[str, torch.Size] = {}  # the agreed model's tensors, to check weights against
        self.answers: dict[int, object] = {}  # client id -> its probe answer that came with training
        self.asked = 0  # teachers sent a probe message of their own
        self.opted_out: list[int] = []  # teachers whose node config says they answer no probe (never experts)
        self.with_training_seconds: list[float] = []  # node compute of the answers that came with training
        self.train_started: float | None = None  # wall clock when the training messages went out

    # -- the four steps ------------------------------------------------------------------------------
    def train(self, grid: Grid, node_ids: Iterable[int]) -> dict[int, int]:
        """Step 0 on every node; returns ``{client id: node id}`` of the nodes that trained.

        With ``probe.with_training`` each message also carries the probe (it does not depend on the query),
        and the teachers' answers are kept for :meth:`probe`: one round trip per teacher fewer.
        """
        node_ids, probe = list(node_ids), {}
        if self.cfg.strategy.probe.with_training:
            probe = {R.PROBE_SPEC: R.pack_probe(self.cfg, None)}
        self.train_started = time.time()
        replies = self._exchange(grid, "train", [self._message(n, R.TRAIN, **probe) for n in node_ids])
        if probe:  # the probe's bytes are the probe step's, wherever they travel
            self._move_bytes("sent", "train", "probe", len(node_ids) * len(probe[R.PROBE_SPEC].deflate()))
        node_of = {}
        for r in replies:
            metrics = r.content.metric_records[R.METRICS]
            k = int(metrics["client"])
            node_of[k] = r.metadata.src_node_id
            self.client_of[r.metadata.src_node_id] = k
            self.info[k] = dict(metrics)
            if (answer := r.content.metric_records.get(R.PROBE_SCORES)) is not None:
                self.answers[k] = answer
                self.with_training_seconds.append(float(answer.get("seconds", 0.0)))
                self._move_bytes("received", "train", "probe", len(answer.deflate()))
        return node_of

    def _move_bytes(self, direction: str, source: str, target: str, n: int) -> None:
        counts = self.bytes[direction]
        counts[source] = counts.get(source, 0) - n
        counts[target] = counts.get(target, 0) + n

    def probe(self, grid: Grid, teachers: dict[int, int], shape, num_classes: int) -> dict[int, torch.Tensor]:
        """Every teacher's probe answer: ``{client: scores}`` of the valid ones (invalid ones are dropped).

        Answers that came with the training replies are used when they probed the agreed input shape;
        the other teachers get a probe message of their own.
        """
        start, scores, ask = time.perf_counter(), {}, []
        for k, node in teachers.items():
            if not int(self.info.get(k, {}).get("answers-probe", 1)):  # opted out in its node config
                self.opted_out.append(k)
                continue
            answer = self.answers.get(k)
            if answer is None or [int(v) for v in answer.get("shape", [])] != list(shape):
                ask.append(node)
            elif (reply := self._valid_scores(node, answer, num_classes)) is not None:
                scores[k] = reply
        self.seconds["probe"] = self.seconds.get("probe", 0.0) + time.perf_counter() - start
        self.asked += len(ask)
        if ask:
            spec = R.pack_probe(self.cfg, shape)
            for r in self._exchange(grid, "probe", [self._message(n, R.PROBE, **{R.PROBE_SPEC: spec}) for n in ask]):
                answer = r.content.metric_records.get(R.PROBE_SCORES)
                if (reply := self._valid_scores(r.metadata.src_node_id, answer, num_classes)) is not None:
                    scores[self.client_of[r.metadata.src_node_id]] = reply
        return scores

    def _valid_scores(self, node_id: int, answer, num_classes: int) -> torch.Tensor | None:
        """The scores of a probe answer, or ``None`` (and the teacher dropped, with the reason) if unusable."""
        try:
            reply = torch.tensor(answer["scores"], dtype=torch.float32)
        except (KeyError, TypeError, ValueError):
            reply = None
        reason = "missing or malformed scores" if reply is None else check_probe_reply(reply, num_classes)
        if reason is None:
            return reply
        self._drop(node_id, "probe", f"invalid reply: {reason}")
        return None

    def probe_cost(self) -> dict:
        """The probe as it was spent: node compute and server wall seconds.

        Compute on the nodes for the answers that came with training (summed over nodes, like
        ``local_training``'s seconds); wall seconds here for probe messages and masking.
        """
        return {
            "answers_with_training": len(self.with_training_seconds),
            "opted_out": sorted(self.opted_out),
            "node_seconds_with_training": float(sum(self.with_training_seconds)),
            "probe_messages": self.asked,
            "server_seconds": self.seconds.get("probe", 0.0) + self.seconds.get("mask", 0.0),
        }

    def fetch(
        self, grid: Grid, clients: list[int], node_of: dict[int, int], step: str = "weights"
    ) -> dict[int, object]:
        """Weights of ``clients`` (for QKT: the relevant experts only): ``{client: ArrayRecord}``."""
        msgs = [self._message(node_of[k], R.WEIGHTS) for k in clients]
        out = {}
        for r in self._exchange(grid, step, msgs):
            k = self.client_of[r.metadata.src_node_id]
            record = r.content.array_records.get(R.TEACHER_ARRAYS)
            try:
                reason = (
                    "reply without weights"
                    if record is None
                    else check_weights(R.state_dict_of(record), self.expected_shapes)
                )
            except (ValueError, TypeError, RuntimeError) as err:  # arrays that do not even decode
                reason = f"undecodable weights ({err})"
            if reason is None:
                out[k] = record
            else:
                self._drop(r.metadata.src_node_id, step, f"invalid reply: {reason}")
        return out

    def query(self, grid: Grid, node_id: int, arrays: dict, experts) -> dict | None:
        """Ship experts + masks to the querying node; returns its metrics."""
        records = {f"{R.EXPERT_ARRAYS}{k}": a for k, a in arrays.items()}
        records[R.EXPERT_MASKS] = R.pack_masks({e: experts[e] for e in arrays})
        replies = self._exchange(grid, "qkt", [self._message(node_id, R.QKT, **records)])
        return dict(replies[0].content.metric_records[R.METRICS]) if replies else None

    def local_training(self) -> dict:
        """Step 0 as the nodes measured it, and where the rest of the train step's wall time went."""
        return train_step_timeline(list(self.info.values()), self.train_started, self.seconds.get("train", 0.0))

    def resume_or_probe(self, grid: Grid, teachers: dict[int, int], shape, num_classes: int) -> dict:
        """The probe step, or its scores from the checkpoint (for the teachers that trained this time)."""
        saved = self.checkpoint.get("probe")
        if saved is not None:
            self.resumed.append("probe")
            return {int(k): torch.tensor(v) for k, v in saved.items() if int(k) in teachers}
        scores = self.probe(grid, teachers, shape, num_classes)
        self.checkpoint.put("probe", {str(k): v.tolist() for k, v in scores.items()})
        return scores

    def select_and_fetch(self, grid: Grid, scores: dict, query_classes: tuple[int, ...], node_of: dict) -> tuple:
        """Masks, the experts of the query classes and their weights; an expert that fails is replaced."""
        start = time.perf_counter()
        masks, selection = steps.choose_experts(self.cfg, scores, query_classes)
        self.seconds["mask"] = time.perf_counter() - start
        arrays = self.fetch(grid, selection.relevant, node_of)
        for _ in range(len(scores)):  # an expert that failed to send weights: re-select without it
            if set(selection.relevant) <= set(arrays):
                break
            scores = {k: v for k, v in scores.items() if k in arrays or k not in selection.relevant}
            masks, selection = steps.choose_experts(self.cfg, scores, query_classes)
            arrays.update(self.fetch(grid, [k for k in selection.relevant if k not in arrays], node_of))
        return masks, selection, {k: arrays[k] for k in selection.relevant}

    # -- the protocol --------------------------------------------------------------------------------
    def run(self, grid: Grid) -> dict:
        """Run QKT over the grid; returns the results dictionary.

        The server holds no data: the querying node announces its query classes, label-space size and
        input shape in its training reply.
        """
        bar = tqdm(total=4, desc="QKT", unit="step", disable=not self.cfg.progress)
        bar.set_postfix_str("local training")
        node_of = self.node_of = self.train(grid, self.wait_for_nodes(grid))
        self.checkpoint.put("train", {str(k): self.info[k] for k in sorted(node_of)})  # the local models are on disk
        for k in range(self.cfg.partition.num_clients):
            if k not in node_of:  # never connected, or failed training (then also listed by node id)
                self.dropped.setdefault(str(k), "train: no trained model from this client")
        query_client = self.cfg.query.client
        if query_client not in node_of:
            reasons = "; ".join(f"{k}: {v}" for k, v in self.dropped.items()) or "it never connected"
            raise RuntimeError(f"the querying client {query_client} did not train, nothing to do ({reasons})")
        info = self.info[query_client]
        query_classes = [int(c) for c in info["query-classes"]]
        num_classes, shape = int(info["num-classes"]), tuple(int(v) for v in info["input-shape"])
        reference = build_model(self.cfg.model.name, shape, num_classes, seed=0)
        self.expected_shapes = {k: v.shape for k, v in reference.state_dict().items()}
        teachers = {k: n for k, n in node_of.items() if k != query_client}
        bar.update()
        if (saved := self.checkpoint.get("qkt")) is not None:  # probe, experts and query learning were done
            bar.close()
            self.resumed.append("qkt")
            return {**saved, "local_training": self.local_training(), "resumed": self.resumed}
        bar.set_postfix_str(f"probing {len(teachers)} teachers")
        scores = self.resume_or_probe(grid, teachers, shape, num_classes)
        bar.update()
        bar.set_postfix_str("fetching experts")
        masks, arrays, experts, chosen, fallbacks = {}, {}, {}, {}, []
        if self.cfg.method.teachers:  # a method without teacher terms (the control) fetches no one
            masks, selection, arrays = self.select_and_fetch(grid, scores, tuple(query_classes), node_of)
            experts, chosen, fallbacks = steps.expert_classes(masks, selection), selection.experts, selection.fallbacks
        bar.update()
        bar.set_postfix_str(f"query learning with {len(arrays)} experts")
        metrics = self.query(grid, node_of[query_client], arrays, experts)
        bar.update()
        bar.close()
        results = {
            "runtime": "flower",
            "method": self.cfg.method.name,
            "teachers": self.cfg.method.teachers,
            "seed": self.cfg.seed,
            "querying_client": query_client,
            "query_classes": list(query_classes),
            "num_classes": num_classes,
            "input_shape": list(shape),
            "probe": {"scores": {k: v.tolist() for k, v in scores.items()},
                      "masks": {k: torch.nonzero(m).flatten().tolist() for k, m in masks.items()}},
            "experts": chosen,
            "calibration_shift": (metrics or {}).get("calibration_shift"),
            "fallbacks": fallbacks,
            "metrics": metrics,
            "local_training": self.local_training(),
            "probe_cost": self.probe_cost(),
            "dropped": self.dropped,
            "resumed": self.resumed,
            "bytes": self.bytes,
            "seconds": self.seconds,
        }  # fmt: skip
        if metrics is not None:
            self.checkpoint.put("qkt", results)
        return results
