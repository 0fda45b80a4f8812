"""What a node decides for itself: where its files are, how much work a message may ask of it, and its probe policy.

A SuperNode trusts no server with its disk or its compute. The experiment a message carries says *what* to run
(dataset name, partition, model, recipe); the node says *where* (its data root and caches) and *how much* (limits a
message must stay within). Settings come from the node config (``flower-supernode --node-config '...'``) over the
node's own defaults (:class:`NodeSettings`); the simulation runtime, where the user owns every node, hands the user's
paths to its nodes as their defaults (:func:`simulation_defaults`).

Node config keys (all optional except ``partition-id``, which Flower sets in simulation):

=================  ========================================================================================
``data-root``      the node's copy of the dataset (default: the dataset's folder in this package's ``conf/``)
``cache-dir``      keep trained local models there (default: none kept)
``partition-cache``  keep computed splits there (default: none kept)
``download``       ``true`` / ``false``: may a message ask this node to download its dataset (default true)
``max-epochs``     the most epochs of any training a message may ask for (local, a federated round, a phase)
``max-batch-size`` the largest batch a message may ask for (training and probe inference)
``max-probe-n``    the most noise inputs a probe may ask for
``max-parameters`` the largest model a message may ask this node to build
``probe``          ``false``: this node does not answer the noise probe (it is then never chosen as an expert)
``noise-seed``     seeds the noise this node adds to its probe answer (default: fresh randomness per answer,
                   which a server cannot subtract; simulations set it for reproducible runs)
=================  ========================================================================================
"""

from __future__ import annotations

import functools
import os
import shlex
from collections.abc import Mapping
from dataclasses import dataclass, fields, replace
from pathlib import Path

import yaml

from qkt_flower.config import CONF_DIR, ExperimentConfig
from qkt_flower.errors import ConfigError
from qkt_flower.experiments.cache import local_models_dir
from qkt_flower.models import build_model

ENV = "QKT_NODE_CONFIG"


class LimitError(ValueError):
    """A message asks for more work than this node allows: which limit, and by how much."""


@dataclass(frozen=True)
class NodeSettings:
    """A node's own paths, limits and probe policy (see the module's table for the node-config keys)."""

    data_root: str | None = None
    cache_dir: str | None = None
    partition_cache: str | None = None
    download: bool = True
    max_epochs: int = 200
    max_batch_size: int = 4096
    max_probe_n: int = 100_000
    max_parameters: int = 50_000_000
    probe: bool = True
    noise_seed: int | None = None

    @classmethod
    def from_environment(cls, environ: Mapping[str, str] | None = None) -> NodeSettings:
        """The node's own defaults from ``QKT_NODE_CONFIG`` (``'data-root=/data cache-dir=/cache'``), if set.

        Set by whoever starts the node (its operator, or ``python -m qkt_flower.fl.launch`` for the nodes of a
        ``flwr run`` simulation, where Flower passes no node config of ours).
        """
        text = (os.environ if environ is None else environ).get(ENV, "")
        pairs = {}
        for item in shlex.split(text):
            key, sep, value = item.partition("=")
            if not sep or not key:
                raise ConfigError(ENV, item, "key=value pairs separated by spaces")
            pairs[key] = value
        return cls.from_node_config(pairs)

    @classmethod
    def from_node_config(cls, node_config: Mapping, defaults: NodeSettings | None = None) -> NodeSettings:
        """``defaults`` (or the built-in ones) with the keys of ``node_config`` over them; a bad value is refused."""
        base = defaults or cls()
        known = {f.name.replace("_", "-") for f in fields(cls)} | FLOWER_KEYS
        if unknown := sorted(set(node_config) - known):
            raise ConfigError(f"node-config.{unknown[0]}", node_config[unknown[0]], f"one of {sorted(known)}")
        changes = {}
        for f in fields(cls):
            key = f.name.replace("_", "-")
            if key not in node_config:
                continue
            value = node_config[key]
            try:
                changes[f.name] = _parse(value, getattr(cls(), f.name), f.name)
            except (TypeError, ValueError):
                raise ConfigError(f"node-config.{key}", value, _EXPECTED[f.name]) from None
        return replace(base, **changes)

    def as_node_config(self) -> str:
        """The settings that differ from the built-in defaults, as ``QKT_NODE_CONFIG`` text."""
        default, items = NodeSettings(), []
        for f in fields(self):
            value = getattr(self, f.name)
            if value != getattr(default, f.name):
                items.append(f"{f.name.replace('_', '-')}={str(value).lower() if isinstance(value, bool) else value}")
        return shlex.join(items)

    def run(self, cfg: ExperimentConfig) -> ExperimentConfig:
        """The experiment of a message as this node runs it: its own paths, within its limits.

        Raises :class:`LimitError` if the message asks for more than this node allows (nothing is loaded first).
        """
        self.check_limits(cfg)
        if cfg.dataset.download and not self.download:
            raise LimitError("dataset.download=true, but this node does not download datasets (node config)")
        dataset = replace(cfg.dataset, root=self.data_root or default_root(cfg.dataset.name))
        local = replace(cfg.local, cache_dir=self.cache_dir)
        return replace(cfg, dataset=dataset, local=local, partition_cache=self.partition_cache,
                       checkpoint_dir=None, resume=False)  # fmt: skip

    def check_limits(self, cfg: ExperimentConfig) -> None:
        """Refuse a message whose epochs, batches or probe exceed this node's limits."""
        epochs = {"local.epochs": cfg.local.epochs, "baselines.epochs_per_round": cfg.baselines.epochs_per_round}
        batches = {"local.batch_size": cfg.local.batch_size, "strategy.probe.batch_size": cfg.strategy.probe.batch_size}
        for i, phase in enumerate(cfg.method.phases):
            epochs[f"method.phases.{i}.epochs"] = phase.epochs
            batches[f"method.phases.{i}.batch_size"] = phase.batch_size
        for key, value in epochs.items():
            if value > self.max_epochs:
                raise LimitError(f"{key}={value} exceeds this node's max-epochs={self.max_epochs}")
        for key, value in batches.items():
            if value > self.max_batch_size:
                raise LimitError(f"{key}={value} exceeds this node's max-batch-size={self.max_batch_size}")
        self.check_probe_n(cfg.strategy.probe.n)

    def check_probe_n(self, n: int) -> None:
        """Refuse a probe of more than ``max_probe_n`` inputs."""
        if n > self.max_probe_n:
            raise LimitError(f"a probe of {n} inputs exceeds this node's max-probe-n={self.max_probe_n}")

    def check_model(self, name: str, shape: tuple[int, ...], num_classes: int) -> None:
        """Refuse building model ``name`` (for this input shape and label space) if it is over ``max_parameters``."""
        parameters = model_parameters(name, shape, num_classes)
        if parameters > self.max_parameters:
            raise LimitError(f"model {name} has {parameters:,} parameters, over this node's "
                             f"max-parameters={self.max_parameters:,}")  # fmt: skip


FLOWER_KEYS = {"partition-id", "num-partitions"}  # set by Flower in simulation; read by the app, not a setting
_EXPECTED = {
    "data_root": "a folder",
    "cache_dir": "a folder",
    "partition_cache": "a folder",
    "download": "true or false",
    "max_epochs": "an integer >= 0",
    "max_batch_size": "an integer >= 1",
    "max_probe_n": "an integer >= 1",
    "max_parameters": "an integer >= 1",
    "probe": "true or false",
    "noise_seed": "an integer",
}


def _parse(value, default, name: str):
    """A node-config value (Flower gives str, int, float or bool) as the type of the setting."""
    if name in ("download", "probe"):
        if isinstance(value, bool):
            return value
        if str(value).lower() in ("true", "false"):
            return str(value).lower() == "true"
        raise ValueError(value)
    if name in ("data_root", "cache_dir", "partition_cache"):
        if not isinstance(value, str) or not value:
            raise ValueError(value)
        return value
    if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
        raise ValueError(value)
    number = int(value)
    if number < (0 if name in ("max_epochs", "noise_seed") else 1):
        raise ValueError(value)
    return number


@functools.cache
def model_parameters(name: str, shape: tuple[int, ...], num_classes: int) -> int:
    """Parameters of model ``name`` for this input shape and label space."""
    return sum(p.numel() for p in build_model(name, shape, num_classes, seed=0).parameters())


@functools.cache
def default_root(dataset: str) -> str:
    """The dataset's folder as this package's ``conf/dataset/`` names it (a node's default data root)."""
    for path in sorted((CONF_DIR / "dataset").glob("*.yaml")):
        tree = yaml.safe_load(path.read_text()) or {}
        group = tree.get("dataset", tree)  # some files nest their values under the group's name
        if group.get("name") == dataset and group.get("root"):
            return str(Path(group["root"]).expanduser())
    raise ConfigError("dataset.name", dataset, "a dataset this node has a default folder for (or data-root)")


def simulation_defaults(cfg: ExperimentConfig, cache_dir: str | None = None) -> NodeSettings:
    """The settings of simulated nodes: the user runs them all, so the user's paths are theirs.

    ``cache_dir``: where they keep trained models (``local.cache_dir``; when it is ``null``, the checkpoint's
    folder, if any);
    ``noise-seed`` is the run's seed, so a simulation with probe noise repeats to the digit.
    """
    models = local_models_dir(cfg.local.cache_dir)
    return NodeSettings(
        data_root=cfg.dataset.root, cache_dir=str(models) if models else cache_dir,
        partition_cache=cfg.partition_cache, download=cfg.dataset.download, noise_seed=cfg.seed,
    )  # fmt: skip
