"""How far any transfer could go on a cell: the pooled-data oracle (a reference row, not a method).

The querying client's model fine-tuned with the class-balanced control's recipe, but with every labelled image of
the query classes held anywhere in the federation beside its own data, instead of its five shots (no jittered
shot copies: real images replace them). No federated method may see other clients' images; this row bounds what
moving the federation's knowledge of the query classes into a model of the client's size, under the same budget
and calibration, can reach. The grid tables it beside the methods and never counts it as one
(:func:`qkt_flower.experiments.tables.claim_conditions`).
"""

from __future__ import annotations

from dataclasses import replace

import torch
from torch import nn

from qkt_flower.data.federation import Federation
from qkt_flower.experiments import steps
from qkt_flower.qkt.learn import query_learning
from qkt_flower.qkt.task import QueryTask

ORACLE = "oracle: pooled query-class images (not a method)"
"""The oracle row's name; rows whose name starts with "oracle" are references, never a competitor."""


def pooled_task(fed: Federation) -> QueryTask:
    """The querying client's data plus every other client's images of the query classes."""
    s = fed.scenario
    labels, query = fed.train.labels, torch.tensor(s.query_classes)
    others = [p[torch.isin(labels[p], query)] for k, p in enumerate(s.partitions) if k != s.client]
    indices = torch.cat([s.partitions[s.client], *others])
    return QueryTask(fed.train.subset(indices), s.query_classes, s.local_classes)


def oracle_model(cfg, fed: Federation, local_model: nn.Module, device) -> nn.Module:
    """The control's recipe on :func:`pooled_task` (jittered shot copies off)."""
    method = cfg.method.without_teachers()
    method = replace(method, transfer=replace(method.transfer, augment_shots=0))
    with steps.precision(cfg, torch.device(device)):
        return query_learning(local_model, pooled_task(fed), [], method, cfg.seed, device, cfg.progress)[0]
