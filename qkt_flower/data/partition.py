"""Non-IID partitioning of a training split across clients, with flwr-datasets partitioners.

Only the labels are handed to the partitioner (an in-memory ``datasets.Dataset`` of ``label`` and
row ``idx``), so it needs no Hugging Face Hub access. It is still slow — ~1 s per client on 60k labels,
most of it ``datasets`` hashing its arguments for fingerprints — and every process that builds the
federation (each Ray actor, each SuperNode, each grid cell) needs the same split: :func:`cached_partition_indices`
keeps it in memory and on disk, keyed by the labels and every argument. :class:`PartitionSpec` is the
``partition`` config group (its defaults are ``conf/partition/pathological.yaml``).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch

from qkt_flower.errors import ConfigError, require

PARTITIONS = ("pathological", "dirichlet", "iid")


@dataclass
class PartitionSpec:
    """How the training split is spread over clients (flwr-datasets partitioners)."""

    kind: str = "pathological"
    num_clients: int = 10
    classes_per_client: int | None = 3
    assignment: str | None = "first-deterministic"  # random | deterministic | first-deterministic
    alpha: float | None = None
    min_partition_size: int | None = None

    def check(self) -> None:
        """Refuse a value not allowed: :class:`~qkt_flower.errors.ConfigError` keyed by field (``kind``, ...)."""
        require(self.kind in PARTITIONS, "kind", self.kind, f"one of {list(PARTITIONS)}")
        require(self.num_clients >= 2, "num_clients", self.num_clients,
                "an integer >= 2 (a querying client and a teacher)")  # fmt: skip
        if self.kind == "dirichlet":
            require(self.alpha is not None and self.alpha > 0, "alpha", self.alpha, "a float > 0")
        if self.kind == "pathological":
            ok = self.classes_per_client is not None and self.classes_per_client >= 1
            require(ok, "classes_per_client", self.classes_per_client, "an integer >= 1")


def partition_indices(
    labels: torch.Tensor,
    kind: str,
    num_clients: int,
    seed: int,
    *,
    alpha: float | None = None,
    classes_per_client: int | None = None,
    assignment: str | None = None,
    min_partition_size: int | None = None,
) -> list[torch.Tensor]:
    """Split row indices ``0..N-1`` across ``num_clients`` clients; returns one sorted index tensor per client.

    Parameters
    ----------
    kind
        ``pathological`` (``classes_per_client`` classes each, flwr-datasets ``PathologicalPartitioner``),
        ``dirichlet`` (label shares ~ Dir(``alpha``), ``DirichletPartitioner``) or ``iid``.
    seed
        Fixes the split: the same seed and labels give the same partitions on every machine.
    """
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from datasets import Dataset
    from flwr_datasets.partitioner import DirichletPartitioner, IidPartitioner, PathologicalPartitioner

    n = int(labels.shape[0])
    if num_clients < 1 or num_clients > n:
        raise ConfigError("partition.num_clients", num_clients, f"between 1 and the {n} training samples")
    if kind == "pathological":
        num_classes = int(labels.max()) + 1
        if classes_per_client is None or not 1 <= classes_per_client <= num_classes:
            raise ConfigError("partition.classes_per_client", classes_per_client, f"an integer in [1, {num_classes}]")
        partitioner = PathologicalPartitioner(
            num_partitions=num_clients,
            partition_by="label",
            num_classes_per_partition=classes_per_client,
            class_assignment_mode=assignment or "first-deterministic",
            seed=seed,
        )
    elif kind == "dirichlet":
        if alpha is None or alpha <= 0:
            raise ConfigError("partition.alpha", alpha, "a positive float")
        partitioner = DirichletPartitioner(
            num_partitions=num_clients,
            partition_by="label",
            alpha=alpha,
            min_partition_size=min_partition_size if min_partition_size is not None else 10,
            self_balancing=False,
            seed=seed,
        )
    elif kind == "iid":
        partitioner = IidPartitioner(num_partitions=num_clients)
    else:
        raise ConfigError("partition.kind", kind, f"one of {list(PARTITIONS)}")

    table = Dataset.from_dict({"label": labels.tolist(), "idx": list(range(n))})
    if kind == "iid":  # IidPartitioner splits in order: shuffle the rows first, with the seed
        table = table.shuffle(seed=seed)
    partitioner.dataset = table
    try:
        parts = [
            torch.tensor(sorted(partitioner.load_partition(i)["idx"]), dtype=torch.long) for i in range(num_clients)
        ]
    except ValueError as err:  # e.g. Dirichlet cannot reach min_partition_size
        raise ConfigError("partition", kind, f"flwr-datasets could not build it: {err}") from err
    return parts


log = logging.getLogger(__name__)
_MEMO: dict[str, list[torch.Tensor]] = {}


def partition_key(labels: torch.Tensor, kind: str, num_clients: int, seed: int, **options) -> str:
    """Hash of everything that determines the split, flwr-datasets' version included."""
    from importlib.metadata import version

    h = hashlib.sha256(labels.to(torch.int64).contiguous().numpy().tobytes())
    h.update(json.dumps([kind, num_clients, seed, options, version("flwr-datasets")], sort_keys=True).encode())
    return h.hexdigest()[:24]


def cached_partition_indices(
    labels: torch.Tensor, kind: str, num_clients: int, seed: int, cache_dir: str | Path | None = None, **options
) -> list[torch.Tensor]:
    """:func:`partition_indices`, memoised in this process and (with ``cache_dir``) in ``cache_dir/<key>.pt``.

    The file is written atomically (temp file + rename), so parallel actors never read half a file;
    a cache that cannot be written is skipped with a warning (the split is recomputed next time).
    """
    key = partition_key(labels, kind, num_clients, seed, **options)
    if key in _MEMO:
        return [t.clone() for t in _MEMO[key]]
    path = Path(cache_dir).expanduser() / f"{key}.pt" if cache_dir else None
    parts = None
    if path is not None and path.exists():
        try:
            parts = torch.load(path, weights_only=True)
        except Exception as err:  # a corrupt file: recompute and overwrite
            log.warning("partition cache %s unreadable (%s); recomputing", path, err)
    if parts is None:
        parts = partition_indices(labels, kind, num_clients, seed, **options)
        if path is not None:
            try:
                path.parent.mkdir(parents=True, exist_ok=True)
                with tempfile.NamedTemporaryFile(dir=path.parent, suffix=".tmp", delete=False) as tmp:
                    torch.save(parts, tmp.name)
                os.replace(tmp.name, path)
            except OSError as err:
                log.warning("partition cache %s not written (%s)", path, err)
    _MEMO[key] = parts
    return [t.clone() for t in parts]


def class_profile(labels: torch.Tensor, indices: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Samples per class of one client, length C."""
    return torch.bincount(labels[indices], minlength=num_classes)
