"""Everything a run derives from its data specs: splits, partitions, the query scenario, the test view.

It is a pure function of the dataset, partition and query specs and the seed (and the files on disk), so
the reference runner, every simulated client and every SuperNode rebuild the *same* federation
independently; no data is ever shipped between them.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import torch

from qkt_flower.data.datasets import DatasetSpec, load_dataset
from qkt_flower.data.images import ImageDataset
from qkt_flower.data.partition import PartitionSpec, cached_partition_indices
from qkt_flower.data.query import QueryScenario, QuerySpec, check_label_space, make_query_scenario, view_indices


@dataclass(frozen=True)
class Federation:
    """The data side of one experiment.

    Attributes
    ----------
    train, test
        The (possibly per-class capped) splits.
    scenario
        Partitions after the query cut, query and local classes of the querying client.
    """

    train: ImageDataset
    test: ImageDataset
    scenario: QueryScenario

    @property
    def num_clients(self) -> int:
        """Number of clients K."""
        return len(self.scenario.partitions)

    def client_data(self, client: int) -> ImageDataset:
        """Training data of ``client`` (its private partition)."""
        return self.train.subset(self.scenario.partitions[client])

    def partition_key(self, client: int) -> str:
        """A short fingerprint of ``client``'s partition: two queriers' federations that leave it as it is agree."""
        indices = self.scenario.partitions[client].to(torch.int64).numpy().tobytes()
        return hashlib.sha256(indices).hexdigest()[:16]

    def class_counts(self, client: int) -> torch.Tensor:
        """Training samples per class at ``client``."""
        return torch.bincount(self.train.labels[self.scenario.partitions[client]], minlength=self.train.num_classes)

    def test_view(self) -> ImageDataset:
        """The querying client's test view: test samples of its local and query classes."""
        return self.test.subset(view_indices(self.test.labels, self.scenario))


def cap_per_class(data: ImageDataset, per_class: int | None, seed: int) -> ImageDataset:
    """At most ``per_class`` samples of each class, chosen with ``seed`` (quick runs and tests)."""
    if per_class is None:
        return data
    order = torch.randperm(len(data), generator=torch.Generator().manual_seed(seed))
    keep = [order[data.labels[order] == c][:per_class] for c in range(data.num_classes)]
    return data.subset(torch.sort(torch.cat(keep)).values)


@dataclass(frozen=True)
class Split:
    """The loaded, capped splits and the clients' partitions before any query cut (shared by every querier)."""

    train: ImageDataset
    test: ImageDataset
    partitions: list[torch.Tensor]

    def cut(self, query: QuerySpec, seed: int) -> Federation:
        """The federation of one querying client (``query.client``): its query chosen and cut."""
        q = query
        scenario = make_query_scenario(
            self.train.labels,
            self.partitions,
            self.train.num_classes,
            q.client,
            q.classes,
            q.num_classes,
            q.shots,
            seed,
            min_local_count=q.min_local_count,
        )
        return Federation(self.train, self.test, scenario)


def load_split(
    dataset: DatasetSpec, partition: PartitionSpec, query: QuerySpec, seed: int, partition_cache: str | None = None
) -> Split:
    """Load, cap and partition the data as the specs say (``query`` is checked against the loaded label space)."""
    d, p = dataset, partition
    options = {"image_size": d.image_size} if d.name == "imagefolder" and d.image_size else {}
    train, test = load_dataset(d.name, d.root, download=d.download, **options)
    train = cap_per_class(train, d.train_per_class, seed=seed)
    test = cap_per_class(test, d.test_per_class, seed=seed)
    check_label_space(query, p, train.num_classes, num_train=len(train))
    partitions = cached_partition_indices(
        train.labels,
        p.kind,
        p.num_clients,
        seed,
        partition_cache,
        alpha=p.alpha,
        classes_per_client=p.classes_per_client,
        assignment=p.assignment,
        min_partition_size=p.min_partition_size,
    )
    return Split(train, test, partitions)


def build_federations(
    dataset: DatasetSpec, partition: PartitionSpec, query: QuerySpec, seed: int, partition_cache: str | None = None
) -> list[Federation]:
    """One federation per querying client of ``query`` (``query.clients``), over one loaded split."""
    split = load_split(dataset, partition, query, seed, partition_cache)
    return [split.cut(query.alone(q), seed) for q in query.queriers()]


def build_federation(
    dataset: DatasetSpec, partition: PartitionSpec, query: QuerySpec, seed: int, partition_cache: str | None = None
) -> Federation:
    """Load, cap, partition and cut the data exactly as the specs say (validating against the loaded data).

    ``partition_cache``: folder of cached splits (see :func:`~qkt_flower.data.partition.cached_partition_indices`).
    """
    return load_split(dataset, partition, query, seed, partition_cache).cut(query, seed)
