"""The probe round of a QKT run: every teacher model's answer to the noise probe, in one exchange.

The probe does not depend on the query, so one round serves every querying client of a run: each teacher
model some querier meets answers once (with its training reply, or a probe message of its own); answers that
are unusable drop their teacher with the reason. Its cost is booked apart from the queriers' own steps.
"""

from __future__ import annotations

import time

import torch
from flwr.serverapp import Grid

from qkt_flower.config import ExperimentConfig
from qkt_flower.fl import records as R
from qkt_flower.fl.checkpoint import Checkpoint
from qkt_flower.fl.exchange import Exchange
from qkt_flower.qkt.probe import check_probe_reply


class ProbeRound(Exchange):
    """The books a QKT run keeps of its nodes (train replies, probe answers) and its one probe round."""

    def __init__(
        self, cfg: ExperimentConfig, cfg_yaml: str, timeout: float, connect_timeout: float,
        checkpoint: Checkpoint | None = None,
    ) -> None:  # fmt: skip
        super().__init__(cfg, cfg_yaml, timeout, connect_timeout)
        self.checkpoint = checkpoint or Checkpoint(None, cfg_yaml, False)
        self.resumed: list[str] = []  # steps taken from the checkpoint instead of run
        self.info: dict[int, dict] = {}  # client id -> its train reply (num-classes, input-shape, query-classes)
        self.node_of: dict[int, int] = {}  # client id -> node id, of the nodes that trained
        self.answers: dict[tuple[int, int], object] = {}  # (client, model) -> probe answer that came with training
        self.asked = 0  # teacher models sent a probe message of their own
        self.rounds = 0  # probe exchanges (one at most: every model that needs a message gets it in one)
        self.opted_out: list[int] = []  # teachers whose node config says they answer no probe (never experts)
        self.with_training_seconds: list[float] = []  # node compute of the answers that came with training
        self.mask_seconds = 0.0  # masking and expert selection, every querier's

    def models_of(self, client: int) -> list[int]:
        """Per querier, which of ``client``'s models it meets (a node holds one per distinct partition)."""
        models = self.info.get(client, {}).get("models")
        return [int(j) for j in models] if models is not None else [0] * len(self.queriers)

    def probe(self, grid: Grid, wanted: dict[tuple[int, int], int], shape, num_classes: int) -> dict:
        """One probe round: ``{(client, model): scores}`` of the valid answers (invalid ones are dropped).

        ``wanted``: each teacher model some querier meets, and that querier's index (its view finds the model).
        Answers that came with the training replies are used when they probed the agreed input shape; the
        other models get a probe message of their own, all in one exchange.
        """
        start, scores, ask = time.perf_counter(), {}, []
        for (k, j), i in wanted.items():
            if not int(self.info.get(k, {}).get("answers-probe", 1)):  # opted out in its node config
                if k not in self.opted_out:
                    self.opted_out.append(k)
                continue
            answer = self.answers.get((k, j))
            if answer is None or [int(v) for v in answer.get("shape", [])] != list(shape):
                ask.append((k, j, i))
            elif (reply := self._valid_scores(self.node_of[k], answer, num_classes)) is not None:
                scores[(k, j)] = reply
        self.seconds["probe"] = self.seconds.get("probe", 0.0) + time.perf_counter() - start
        self.asked += len(ask)
        if ask:
            self.rounds += 1
            spec = R.pack_probe(self.cfg, shape)
            msgs = [self._message(self.node_of[k], R.PROBE, i, **{R.PROBE_SPEC: spec}) for k, _, i in ask]
            replies = self._exchange(grid, "probe", msgs)
            model_of = {
                m.metadata.message_id: (k, j) for m, (k, j, _) in zip(msgs, ask, strict=True)
            }  # ids set when sent
            for r in replies:
                answer = r.content.metric_records.get(R.PROBE_SCORES)
                if (reply := self._valid_scores(r.metadata.src_node_id, answer, num_classes)) is not None:
                    scores[model_of[r.metadata.reply_to_message_id]] = reply
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
            "probe_rounds": self.rounds,
            "server_seconds": self.seconds.get("probe", 0.0) + self.mask_seconds,
        }

    def resume_or_probe(self, grid: Grid, wanted: dict[tuple[int, int], int], shape, num_classes: int) -> dict:
        """The probe round, or its scores from the checkpoint (for the models that trained this time)."""
        saved = self.checkpoint.get("probe")
        if saved is not None:
            self.resumed.append("probe")
            scores = {tuple(int(v) for v in key.split(".")): torch.tensor(v) for key, v in saved.items()}
            return {key: v for key, v in scores.items() if key in wanted}
        scores = self.probe(grid, wanted, shape, num_classes)
        self.checkpoint.put("probe", {f"{k}.{j}": v.tolist() for (k, j), v in scores.items()})
        return scores
