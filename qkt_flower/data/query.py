"""The query scenario: who asks, for which classes, and how few samples of them it holds.

The querying client ``q`` keeps exactly ``shots`` samples of each query class. When its partition
holds more, the surplus is dropped; when it holds fewer (typical of pathological splits, where ``q``
never saw the class), the missing shots are *moved* from other clients' partitions, so no sample is
held by two clients. :class:`QuerySpec` is the ``query`` config group (its defaults are
``conf/query/single.yaml``); :func:`check_label_space` checks it and the partition spec against the label space.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch

from qkt_flower.data.partition import PartitionSpec
from qkt_flower.errors import ConfigError, require


@dataclass
class QuerySpec:
    """Who queries, for which classes (None = the ones it holds fewest of), with how many shots.

    ``clients``: several querying clients in one run (``qkt-flower``, ``flwr run``), each with its own query
    (``classes`` for all of them, or each one's fewest held) and numbers identical to its run alone; null =
    ``client`` alone.
    """

    client: int = 0
    clients: list[int] | None = None
    classes: list[int] | None = None
    num_classes: int = 1
    shots: int = 5  # samples of each query class left at the querying client (0 = stress test)
    min_local_count: int = 20  # a class with fewer samples at the querying client is neither local nor query

    def check(self) -> None:
        """Refuse a value not allowed: :class:`~qkt_flower.errors.ConfigError` keyed by field (``shots``, ...).

        ``client`` is checked against the number of clients by whoever holds both specs.
        """
        require(self.shots >= 0, "shots", self.shots, "an integer >= 0")
        require(self.min_local_count >= 1, "min_local_count", self.min_local_count, "an integer >= 1")
        classes = list(self.classes or [])
        require(len(set(classes)) == len(classes), "classes", classes, "distinct class ids (one listed twice)")
        if self.clients is not None:
            clients = list(self.clients)
            require(len(clients) >= 2 and len(set(clients)) == len(clients), "clients", clients,
                    "null, or a list of at least two distinct client indices (one querier: query.client)")  # fmt: skip

    def queriers(self) -> list[int]:
        """The querying clients of a run: ``clients``, else ``[client]``."""
        return list(self.clients) if self.clients is not None else [self.client]

    def alone(self, client: int) -> QuerySpec:
        """The query of ``client`` as a run of its own (the same classes, shots and rules)."""
        return dataclasses.replace(self, client=client, clients=None)


def check_label_space(
    query: QuerySpec, partition: PartitionSpec, num_classes: int, num_train: int | None = None
) -> None:
    """Checks that need the label space (and, once loaded, the number of training samples).

    Raises :class:`~qkt_flower.errors.ConfigError` with full keys (``query.classes``, ``partition.num_clients``, ...).
    """
    if query.classes is not None:
        bad = [c for c in query.classes if not 0 <= c < num_classes]
        require(bool(query.classes) and not bad, "query.classes", list(query.classes),
                f"a non-empty list of class ids in [0, {num_classes - 1}]")  # fmt: skip
    else:
        require(1 <= query.num_classes < num_classes, "query.num_classes", query.num_classes,
                f"an integer in [1, {num_classes - 1}]")  # fmt: skip
    if partition.classes_per_client is not None and partition.kind == "pathological":
        require(partition.classes_per_client <= num_classes, "partition.classes_per_client",
                partition.classes_per_client, f"an integer in [1, {num_classes}]")  # fmt: skip
    if num_train is not None:
        require(partition.num_clients <= num_train, "partition.num_clients", partition.num_clients,
                f"at most the {num_train} training samples")  # fmt: skip


@dataclass(frozen=True)
class QueryScenario:
    """Outcome of :func:`make_query_scenario`.

    Attributes
    ----------
    client
        Index of the querying client ``q``.
    query_classes
        ``Q``, sorted.
    local_classes
        Classes ``q`` knows: not in ``Q`` and at least ``min_local_count`` samples at ``q``.
    partitions
        Training indices per client after the query cut.
    """

    client: int
    query_classes: tuple[int, ...]
    local_classes: tuple[int, ...]
    partitions: list[torch.Tensor]

    @property
    def view_classes(self) -> tuple[int, ...]:
        """Classes of ``q``'s test view: local ∪ query."""
        return tuple(sorted(set(self.local_classes) | set(self.query_classes)))


def choose_query_classes(
    counts: torch.Tensor, num_query: int, seed: int, available: torch.Tensor | None = None
) -> tuple[int, ...]:
    """The ``num_query`` classes the client holds fewest samples of (ties broken by a seeded shuffle).

    ``available`` (bool, length C) restricts the choice to classes some other client can teach.
    """
    candidates = [c for c in range(counts.numel()) if available is None or bool(available[c])]
    if not 1 <= num_query < counts.numel() or num_query > len(candidates):
        raise ConfigError(
            "query.num_classes",
            num_query,
            f"an integer in [1, {min(counts.numel() - 1, len(candidates))}] (classes other clients hold)",
        )
    order = torch.randperm(counts.numel(), generator=torch.Generator().manual_seed(seed)).tolist()
    ranked = sorted((c for c in order if c in candidates), key=lambda c: int(counts[c]))  # stable: seed breaks ties
    return tuple(sorted(ranked[:num_query]))


def make_query_scenario(
    labels: torch.Tensor,
    partitions: list[torch.Tensor],
    num_classes: int,
    client: int,
    classes: list[int] | tuple[int, ...] | None,
    num_query: int,
    shots: int,
    seed: int,
    min_local_count: int = 1,
) -> QueryScenario:
    """Pick ``Q`` for client ``client`` and cut its samples of ``Q`` to ``shots`` per class.

    Raises
    ------
    ConfigError
        bad client index, query class outside ``[0, C)``, negative shots, too few samples of a query
        class in the whole federation, or a querying client left with no local class.
    """
    if not 0 <= client < len(partitions):
        raise ConfigError("query.client", client, f"a client index in [0, {len(partitions) - 1}]")
    if shots < 0:
        raise ConfigError("query.shots", shots, "an integer >= 0")
    counts = torch.bincount(labels[partitions[client]], minlength=num_classes)
    if classes is None:
        others = torch.cat([p for k, p in enumerate(partitions) if k != client] or [torch.empty(0, dtype=torch.long)])
        elsewhere = torch.bincount(labels[others], minlength=num_classes)
        query = choose_query_classes(counts, num_query, seed, available=elsewhere >= max(shots, 1))
    else:
        query = tuple(sorted({int(c) for c in classes}))
        bad = [c for c in query if not 0 <= c < num_classes]
        if bad or not query:
            raise ConfigError(
                "query.classes", list(classes), f"a non-empty list of class ids in [0, {num_classes - 1}]"
            )
    local = tuple(c for c in range(num_classes) if c not in query and int(counts[c]) >= max(min_local_count, 1))
    if not local:
        raise ConfigError("query.client", client, "a client that holds samples of at least one non-query class")

    rng = torch.Generator().manual_seed(seed)
    parts = [p.clone() for p in partitions]
    mine = parts[client]
    keep = mine[~torch.isin(labels[mine], torch.tensor(query))]
    shots_taken = []
    for c in query:
        own = mine[labels[mine] == c]
        own = own[torch.randperm(own.numel(), generator=rng)]
        take = own[:shots]
        missing = shots - take.numel()
        if missing > 0:
            donors = [k for k in range(len(parts)) if k != client]
            pool = (
                torch.cat([parts[k][labels[parts[k]] == c] for k in donors])
                if donors
                else torch.empty(0, dtype=torch.long)
            )
            if pool.numel() < missing:
                raise ConfigError(
                    "query.shots", shots, f"at most the {take.numel() + pool.numel()} samples of class {c} available"
                )
            moved = pool[torch.randperm(pool.numel(), generator=rng)[:missing]]
            for k in donors:
                parts[k] = parts[k][~torch.isin(parts[k], moved)]
            take = torch.cat([take, moved])
        shots_taken.append(take)
    parts[client] = torch.sort(torch.cat([keep, *shots_taken])).values
    return QueryScenario(client, query, local, parts)


def view_indices(test_labels: torch.Tensor, scenario: QueryScenario) -> torch.Tensor:
    """Indices of test samples whose label is a local or query class of ``q`` (its test view)."""
    return torch.nonzero(torch.isin(test_labels, torch.tensor(scenario.view_classes))).flatten()
