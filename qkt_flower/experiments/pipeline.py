"""The one in-process pipeline: a federation, its trained local models and probe answers, then any method on it.

The reference runner (``qkt-reference``), the interference grid and the calibration frontier all start from
:func:`prepare`: local models are trained (or loaded from ``local.cache_dir``) once per cell, probe answers are
computed once per probe spec, and every variant of a grid reuses them (:meth:`Experiment.learn` runs one).
"""

from __future__ import annotations

import functools
import logging
import time
from dataclasses import dataclass, field

import torch
from torch import nn

from qkt_flower.data.datasets import ImageDataset
from qkt_flower.data.federation import Federation, build_federation
from qkt_flower.errors import ConfigError
from qkt_flower.experiments import steps
from qkt_flower.experiments.threads import in_parallel
from qkt_flower.qkt.evaluate import evaluate_view
from qkt_flower.qkt.probe import check_probe_reply

log = logging.getLogger(__name__)


@dataclass
class Experiment:
    """One cell: the federation, every client's trained model, and the teachers' probe answers per probe spec."""

    cfg: object
    fed: Federation
    models: dict[int, nn.Module]
    device: torch.device
    seconds: dict[str, float] = field(default_factory=dict)
    _answers: dict = field(default_factory=dict)

    @property
    def client(self) -> int:
        """The querying client."""
        return self.fed.scenario.client

    @property
    def teachers(self) -> list[int]:
        """Every other client."""
        return [k for k in self.models if k != self.client]

    @property
    def view(self) -> ImageDataset:
        """The querying client's test view (test samples of its local and query classes)."""
        return self.fed.test_view()

    def scores(self, cfg=None) -> tuple[dict[int, torch.Tensor], dict[int, str]]:
        """``(valid probe answers, rejected teachers with the reason)`` under ``cfg``'s probe (default: the cell's).

        Cached per probe spec: grid variants that change only the mask or the method reuse the answers.
        """
        cfg = cfg or self.cfg
        key = repr(cfg.strategy.probe)
        if key not in self._answers:
            scores, rejected = {}, {}
            for k in self.teachers:
                reply = steps.answer_probe(cfg, self.models[k], self.fed.train.input_shape, self.device, k)
                reason = check_probe_reply(reply, self.fed.train.num_classes)
                if reason is None:
                    scores[k] = reply
                else:
                    rejected[k] = reason
                    log.warning("teacher %d: probe reply rejected (%s)", k, reason)
            self._answers[key] = (scores, rejected)
        return self._answers[key]

    def learn(self, cfg=None, on_phase_end=None) -> tuple[nn.Module, dict]:
        """``cfg.method`` (default: the cell's) on the querying client; ``info`` adds masks and selection.

        ``cfg`` may change the probe, the mask and the method, not what shapes the local models.
        """
        cfg = cfg or self.cfg
        if cfg is not self.cfg and steps.local_model_key(cfg) != steps.local_model_key(self.cfg):
            raise ConfigError(
                "overrides",
                "(a variant)",
                "a variant may not change the data, the partition, the "
                "query cut, the model or local training: those shape the cell's local models",
            )
        experts, masks, selection = self.experts(cfg)
        model, info = steps.learn_query(cfg, self.fed, self.models[self.client], experts, self.device, on_phase_end)
        return model, {**info, "masks": masks, "selection": selection}

    def experts(self, cfg=None) -> tuple[list, dict, object]:
        """``(experts, masks, selection)`` under ``cfg``'s probe and mask; none for a method without teachers."""
        cfg = cfg or self.cfg
        if not cfg.method.teachers:
            return [], {}, None
        scores, _ = self.scores(cfg)
        masks, selection = steps.choose_experts(cfg, scores, self.fed.scenario.query_classes)
        return steps.make_experts(self.models, masks, selection), masks, selection

    def evaluate(self, model: nn.Module) -> dict:
        """Query / local / overall / mean accuracy and per-class accuracy on the test view (fractions)."""
        s = self.fed.scenario
        return evaluate_view(model, self.view, s.query_classes, s.local_classes, device=self.device)


def prepare(cfg, device: torch.device | None = None) -> Experiment:
    """Load and partition the data, train (or load) every client's model: the start of every in-process run."""
    torch.manual_seed(cfg.seed)
    device = device or steps.resolve_device(cfg.device)
    start = time.perf_counter()
    fed = build_federation(cfg.dataset, cfg.partition, cfg.query, cfg.seed, cfg.partition_cache)
    seconds = {"data": time.perf_counter() - start}
    start = time.perf_counter()
    # side by side, one per core (each on one thread, as on the nodes); largest first, so the cores finish together
    clients = sorted(range(fed.num_clients), key=lambda k: -len(fed.scenario.partitions[k]))
    trained = in_parallel(functools.partial(steps.train_client, cfg, fed, device=device), clients, device)
    models = dict(sorted(zip(clients, trained, strict=True)))
    seconds["local_training"] = time.perf_counter() - start
    return Experiment(cfg, fed, models, device, seconds)
