"""Message exchange with a Flower ``Grid``: bytes and seconds per step, failed nodes recorded, not fatal."""

from __future__ import annotations

import logging
import time

from flwr.app import Message, RecordDict
from flwr.serverapp import Grid

from qkt_flower.config import ExperimentConfig
from qkt_flower.fl import records as R

log = logging.getLogger(__name__)

QUICK = (R.PROBE, R.WEIGHTS)
"""Steps of these messages wait ``simulation.query_timeout``: no training in them (``query.evaluate`` fine-tunes)."""


class Exchange:
    """Send messages that carry the experiment, and keep the books: bytes both ways, seconds, dropped nodes."""

    def __init__(self, cfg: ExperimentConfig, cfg_yaml: str, timeout: float, connect_timeout: float) -> None:
        self.cfg, self.cfg_yaml, self.timeout, self.connect_timeout = cfg, cfg_yaml, timeout, connect_timeout
        self.node_yaml = R.node_view(cfg_yaml)  # what travels: no server path, no checkpoint key
        self.queriers = cfg.queriers()
        # a step for one querier carries that querier's run alone: the node finds the model it meets by it
        multi = len(self.queriers) > 1
        self.view_yaml = [R.querier_view(self.node_yaml, q) if multi else self.node_yaml for q in self.queriers]
        self.bytes: dict[str, dict[str, int]] = {"sent": {}, "received": {}}
        self.dropped: dict[str, str] = {}  # client id (or node id before training) -> reason
        self.seconds: dict[str, float] = {}
        self.client_of: dict[int, int] = {}  # node id -> client id, learnt from the train replies

    def _exchange(self, grid: Grid, step: str, messages: list[Message]) -> list[Message]:
        """Send ``messages``, count bytes both ways, return the replies without errors."""
        start = time.perf_counter()
        sent = self.bytes["sent"]  # steps may repeat (re-selection): accumulate
        sent[step] = sent.get(step, 0) + sum(R.payload_bytes(m.content) for m in messages)
        quick = all(m.metadata.message_type in QUICK for m in messages)
        timeout = self.cfg.simulation.query_timeout if quick else self.timeout
        replies = list(grid.send_and_receive(messages, timeout=timeout))
        # An error reply may come from the SuperLink itself (e.g. "Node Unavailable" for a node that
        # stopped sending heartbeats), so match replies to the message they answer, not to their source.
        dst_of = {m.metadata.message_id: m.metadata.dst_node_id for m in messages}
        ok, answered = [], set()  # a node may get several messages in one step (one per model it holds)
        for r in replies:
            node = dst_of.get(r.metadata.reply_to_message_id, r.metadata.src_node_id)
            answered.add(r.metadata.reply_to_message_id if r.metadata.reply_to_message_id in dst_of else node)
            if r.has_error():
                self._drop(node, step, f"error: {r.error.reason}")
            else:
                ok.append(r)
        for m in messages:
            if m.metadata.message_id not in answered and m.metadata.dst_node_id not in answered:
                self._drop(m.metadata.dst_node_id, step, "no reply (timeout)")
        received = self.bytes["received"]
        received[step] = received.get(step, 0) + sum(R.payload_bytes(r.content) for r in ok)
        self.seconds[step] = self.seconds.get(step, 0.0) + time.perf_counter() - start
        return ok

    def _drop(self, node_id: int, step: str, reason: str) -> None:
        who = self.client_of.get(node_id, f"node {node_id}")
        log.warning("%s dropped at %s: %s", who, step, reason)
        self.dropped[str(who)] = f"{step}: {reason}"

    def _message(self, node_id: int, message_type: str, view: int | None = None, **records) -> Message:
        """A message carrying the run's experiment, or (``view``: a querier's index) that querier's alone."""
        text = self.node_yaml if view is None else self.view_yaml[view]
        content = RecordDict({R.EXPERIMENT: R.pack_experiment(text), **records})
        return Message(content=content, dst_node_id=node_id, message_type=message_type)

    def wait_for_nodes(self, grid: Grid) -> list[int]:
        """Node ids once every expected node has connected (or ``connect_timeout`` passed).

        Nodes register asynchronously, in simulation as in deployment: asking once may see only some
        of them, which would silently drop teachers from the query.
        """
        expected, deadline = self.cfg.partition.num_clients, time.monotonic() + self.connect_timeout
        while len(nodes := list(grid.get_node_ids())) < expected and time.monotonic() < deadline:
            time.sleep(0.5)
        if len(nodes) < expected:
            log.warning("only %d of %d nodes connected within %.0f s; going on", len(nodes), expected,
                        self.connect_timeout)  # fmt: skip
        return nodes
