"""The QKT strategy: one round of a different protocol from FedAvg's, driven over a Flower ``Grid``.

QKT is not a train/aggregate loop, so this class does not subclass Flower's round-based ``Strategy``
(whose ``start`` would have to be rewritten); it sequences four message exchanges instead, each a
small method: local training → noise probe of every teacher → data-free masking (here, on the
server) → weights of the relevant experts only → query learning on the querying node. Every step
tolerates nodes that fail or time out: it uses the answers that came back and records the rest.
With several querying clients (``query.clients``) the first two steps serve them all; the last two run
per querier, each message carrying that querier's run alone (:func:`~qkt_flower.fl.records.querier_view`).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable

import torch
from flwr.app import ConfigRecord
from flwr.serverapp import Grid
from tqdm.auto import tqdm

from qkt_flower.config import ExperimentConfig
from qkt_flower.experiments import steps
from qkt_flower.fl import records as R
from qkt_flower.fl.checkpoint import Checkpoint
from qkt_flower.fl.probe_round import ProbeRound
from qkt_flower.fl.timeline import train_step_timeline
from qkt_flower.models import build_model
from qkt_flower.qkt.probe import check_weights

log = logging.getLogger(__name__)


class QKTStrategy(ProbeRound):
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
        super().__init__(cfg, cfg_yaml, timeout, connect_timeout, checkpoint)
        self.expected_shapes: dict[str, torch.Size] = {}  # the agreed model's tensors, to check weights against
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
            for j in set(self.models_of(k)):
                if (answer := r.content.metric_records.get(R.probe_scores_key(j))) is not None:
                    self.answers[(k, j)] = answer
                    self.with_training_seconds.append(float(answer.get("seconds", 0.0)))
                    self._move_bytes("received", "train", "probe", len(answer.deflate()))
        return node_of

    def _move_bytes(self, direction: str, source: str, target: str, n: int) -> None:
        counts = self.bytes[direction]
        counts[source] = counts.get(source, 0) - n
        counts[target] = counts.get(target, 0) + n

    def fetch(
        self, grid: Grid, clients: list[int], node_of: dict[int, int], step: str = "weights", view: int = 0
    ) -> dict[int, object]:
        """Weights of ``clients`` (for QKT: the relevant experts only) as querier ``view`` meets them."""
        which = {k: ConfigRecord({"index": self.models_of(k)[view]}) for k in clients}  # the model this querier meets
        msgs = [self._message(node_of[k], R.WEIGHTS, view, **{R.MODEL: which[k]}) for k in clients]
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

    def query(self, grid: Grid, node_id: int, arrays: dict, experts, view: int = 0) -> dict | None:
        """Ship experts + masks to querier ``view``'s node; returns its metrics."""
        records = {f"{R.EXPERT_ARRAYS}{k}": a for k, a in arrays.items()}
        records[R.EXPERT_MASKS] = R.pack_masks({e: experts[e] for e in arrays})
        replies = self._exchange(grid, "qkt", [self._message(node_id, R.QKT, view, **records)])
        return dict(replies[0].content.metric_records[R.METRICS]) if replies else None

    def local_training(self) -> dict:
        """Step 0 as the nodes measured it, and where the rest of the train step's wall time went."""
        return train_step_timeline(list(self.info.values()), self.train_started, self.seconds.get("train", 0.0))

    def select_and_fetch(self, grid: Grid, scores: dict, query_classes: tuple[int, ...], view: int) -> tuple:
        """Masks, the experts of the query classes and their weights; an expert that fails is replaced."""
        start = time.perf_counter()
        masks, selection = steps.choose_experts(self.cfg, scores, query_classes)
        self.seconds["mask"] = time.perf_counter() - start
        self.mask_seconds += self.seconds["mask"]
        arrays = self.fetch(grid, selection.relevant, self.node_of, view=view)
        for _ in range(len(scores)):  # an expert that failed to send weights: re-select without it
            if set(selection.relevant) <= set(arrays):
                break
            scores = {k: v for k, v in scores.items() if k in arrays or k not in selection.relevant}
            masks, selection = steps.choose_experts(self.cfg, scores, query_classes)
            missing = [k for k in selection.relevant if k not in arrays]
            arrays.update(self.fetch(grid, missing, self.node_of, view=view))
        return masks, selection, {k: arrays[k] for k in selection.relevant}

    # -- the protocol --------------------------------------------------------------------------------
    def run(self, grid: Grid) -> dict:
        """Run QKT over the grid; returns the results dictionary.

        The server holds no data: each querying node announces its query classes, label-space size and input
        shape in its training reply. With several queriers (``query.clients``) one training step and one probe
        round serve them all; each querier's steps after them are its own, with its own books (bytes, seconds),
        and its results sit under ``queriers`` in the shape of a run with one querier.
        """
        n = len(self.queriers)
        bar = tqdm(total=2 + 2 * n, desc="QKT", unit="step", disable=not self.cfg.progress)
        bar.set_postfix_str("local training")
        node_of = self.node_of = self.train(grid, self.wait_for_nodes(grid))
        self.checkpoint.put("train", {str(k): self.info[k] for k in sorted(node_of)})  # the local models are on disk
        for k in range(self.cfg.partition.num_clients):
            if k not in node_of:  # never connected, or failed training (then also listed by node id)
                self.dropped.setdefault(str(k), "train: no trained model from this client")
        present = [q for q in self.queriers if q in node_of]
        if len(present) < n:
            reasons = "; ".join(f"{k}: {v}" for k, v in self.dropped.items()) or "it never connected"
            missing = [q for q in self.queriers if q not in node_of]
            raise RuntimeError(f"the querying client(s) {missing} did not train, nothing to do ({reasons})")
        info = self.info[self.queriers[0]]
        num_classes, shape = int(info["num-classes"]), tuple(int(v) for v in info["input-shape"])
        reference = build_model(self.cfg.model.name, shape, num_classes, seed=0)
        self.expected_shapes = {k: v.shape for k, v in reference.state_dict().items()}
        bar.update()
        # every teacher model some querier meets, and (for a probe message) the first querier meeting it
        wanted: dict[tuple[int, int], int] = {}
        for i, q in enumerate(self.queriers):
            for k in node_of:
                if k != q:
                    wanted.setdefault((k, self.models_of(k)[i]), i)
        done = {q: self.checkpoint.get(f"qkt.{q}") for q in self.queriers}
        if all(r is not None for r in done.values()):  # every querier's steps were done
            scores = {}
            self.resumed.append("qkt")
        else:
            bar.set_postfix_str(f"probing {len(wanted)} teacher models")
            scores = self.resume_or_probe(grid, wanted, shape, num_classes)
        bar.update()
        shared_bytes, shared_seconds, own = self.bytes, self.seconds, {}
        for i, q in enumerate(self.queriers):
            self.bytes, self.seconds = {"sent": {}, "received": {}}, {}  # this querier's books
            if done[q] is None:
                teachers = {k: scores[(k, self.models_of(k)[i])] for k in node_of
                            if k != q and (k, self.models_of(k)[i]) in scores}  # fmt: skip
                done[q] = self.answer(grid, i, teachers, bar)
                if done[q]["metrics"] is not None:
                    self.checkpoint.put(f"qkt.{q}", done[q])
            else:
                bar.update(2)
            own[q] = done[q]
        self.bytes, self.seconds = shared_bytes, shared_seconds
        bar.close()
        shared = {"runtime": "flower", "method": self.cfg.method.name, "teachers": self.cfg.method.teachers,
                  "seed": self.cfg.seed, "num_classes": num_classes, "input_shape": list(shape),
                  "local_training": self.local_training(), "probe_cost": self.probe_cost(), "dropped": self.dropped,
                  "resumed": self.resumed}  # fmt: skip
        if n == 1:  # the shape of a run with one querier: its books and the shared ones in one
            (mine,) = own.values()
            for book, theirs in (
                (self.bytes["sent"], mine["bytes"]["sent"]),
                (self.bytes["received"], mine["bytes"]["received"]),
                (self.seconds, mine["seconds"]),
            ):
                for step, v in theirs.items():
                    book[step] = book.get(step, 0) + v
            return {**mine, **shared, "bytes": self.bytes, "seconds": self.seconds}
        return {**shared, "queriers": {str(q): r for q, r in own.items()}, "bytes": self.bytes,
                "seconds": self.seconds}  # fmt: skip

    def answer(self, grid: Grid, view: int, scores: dict[int, torch.Tensor], bar) -> dict:
        """Masks, experts, their weights and query learning for querier ``view``; its results (its own books)."""
        q = self.queriers[view]
        query_classes = tuple(int(c) for c in self.info[q]["query-classes"])
        bar.set_postfix_str(f"client {q}: fetching experts")
        masks, arrays, experts, chosen, fallbacks = {}, {}, {}, {}, []
        if self.cfg.method.teachers:  # a method without teacher terms (the control) fetches no one
            masks, selection, arrays = self.select_and_fetch(grid, scores, query_classes, view)
            experts, chosen, fallbacks = steps.expert_classes(masks, selection), selection.experts, selection.fallbacks
        bar.update()
        bar.set_postfix_str(f"client {q}: query learning with {len(arrays)} experts")
        metrics = self.query(grid, self.node_of[q], arrays, experts, view)
        bar.update()
        return {
            "querying_client": q,
            "query_classes": list(query_classes),
            "probe": {"scores": {k: v.tolist() for k, v in scores.items()},
                      "masks": {k: torch.nonzero(m).flatten().tolist() for k, m in masks.items()}},
            "experts": chosen,
            "calibration_shift": (metrics or {}).get("calibration_shift"),
            "fallbacks": fallbacks,
            "metrics": metrics,
            "bytes": self.bytes,
            "seconds": self.seconds,
        }  # fmt: skip
