"""The experiment's typed configuration: the algorithm's own specs, composed from ``conf/`` and checked once.

``conf/`` holds the values a run uses (one YAML per choice of a group; ``conf/method/`` holds the named
methods); the dataclasses here and in the layers below (``DatasetSpec``, ``MethodSpec``, ``ProbeSpec``, ...)
are the schema, each with its own ``check``. :func:`to_config` merges a Hydra ``DictConfig`` into the schema
(type errors become :class:`~qkt_flower.errors.ConfigError` naming the key) and :func:`validate` refuses bad
values before any data is loaded or any model trained.
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path

from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.errors import HydraException
from omegaconf import DictConfig, ListConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from qkt_flower.data.datasets import DatasetSpec
from qkt_flower.data.partition import PartitionSpec
from qkt_flower.data.query import QuerySpec, check_label_space
from qkt_flower.errors import ConfigError, require
from qkt_flower.models import ModelSpec
from qkt_flower.qkt.local import LocalSpec
from qkt_flower.qkt.mask import MaskSpec
from qkt_flower.qkt.method import MethodSpec
from qkt_flower.qkt.probe import ProbeSpec

CONF_DIR = Path(__file__).resolve().parent.parent / "conf"

# Label-space sizes known without loading data (imagefolder is checked after loading).
KNOWN_NUM_CLASSES = {"fashion-mnist": 10, "cifar10": 10, "cifar100": 100, "pathmnist": 9}
ONE_ROUND_BASELINES = ("ensemble", "vanilla_kd", "feddf")
FEDERATED_BASELINES = ("fedavg", "fedprox")


@dataclass
class StrategySpec:
    """The server side of QKT: the noise probe and the expert masks."""

    probe: ProbeSpec = field(default_factory=ProbeSpec)
    mask: MaskSpec = field(default_factory=MaskSpec)

    def check(self) -> None:
        """The probe's and the mask's checks, keys prefixed."""
        for name in ("probe", "mask"):
            try:
                getattr(self, name).check()
            except ConfigError as err:
                raise err.under(name) from None


@dataclass
class SimulationSpec:
    """Flower runtime: simulation size, per-client resources, how long the server waits for nodes, and the network.

    ``network`` (``qkt-flower``): ``auto`` runs the simulation in a network namespace of its own where the host
    allows one (nothing it opens is reachable from another host), else on the host's network with a warning;
    ``isolated`` refuses to run without one; ``host`` never makes one (:mod:`qkt_flower.fl.isolation`).
    """

    num_supernodes: int = 10
    num_cpus: int = 1
    num_gpus: float = 0.0
    connect_timeout: float = 60.0
    reply_timeout: float = 3600.0
    query_timeout: float = 300.0
    network: str = "auto"

    def check(self) -> None:
        """Refuse impossible resources and timeouts, and an unknown network mode."""
        require(self.network in ("auto", "isolated", "host"), "network", self.network, "auto, isolated or host")
        require(self.num_cpus >= 1, "num_cpus", self.num_cpus, "an integer >= 1 (CPUs per simulated client)")
        require(self.num_gpus >= 0, "num_gpus", self.num_gpus, "a float >= 0 (fractions share a GPU)")
        for key in ("connect_timeout", "reply_timeout", "query_timeout"):
            require(getattr(self, key) > 0, key, getattr(self, key), "seconds > 0")


@dataclass
class BaselinesSpec:
    """Baselines computed in the same run as QKT (one-round ones) or by Flower's strategies (federated ones)."""

    one_round: list[str] = field(default_factory=list)
    federated: list[str] = field(default_factory=list)
    rounds: int = 50
    eval_rounds: list[int] = field(default_factory=lambda: [1, 50])
    epochs_per_round: int = 1
    fedprox_mu: float = 0.01
    finetune: bool = True

    def check(self) -> None:
        """Refuse unknown baselines and impossible round budgets."""
        bad = [m for m in self.one_round if m not in ONE_ROUND_BASELINES]
        require(not bad, "one_round", list(self.one_round), f"a list of {list(ONE_ROUND_BASELINES)}")
        bad = [m for m in self.federated if m not in FEDERATED_BASELINES]
        require(not bad, "federated", list(self.federated), f"a list of {list(FEDERATED_BASELINES)}")
        require(self.rounds >= 1, "rounds", self.rounds, "an integer >= 1")
        require(
            bool(self.eval_rounds) and all(1 <= r <= self.rounds for r in self.eval_rounds),
            "eval_rounds",
            list(self.eval_rounds),
            f"a non-empty list of rounds in [1, baselines.rounds={self.rounds}]",
        )
        require(self.epochs_per_round >= 1, "epochs_per_round", self.epochs_per_round, "an integer >= 1")
        require(self.fedprox_mu >= 0, "fedprox_mu", self.fedprox_mu, "a float >= 0")


GROUPS = ("dataset", "partition", "model", "query", "local", "strategy", "method", "simulation", "baselines")


@dataclass
class ExperimentConfig:
    """One experiment: every config group plus the run-wide values (see ``conf/config.yaml``)."""

    dataset: DatasetSpec = field(default_factory=DatasetSpec)
    partition: PartitionSpec = field(default_factory=PartitionSpec)
    model: ModelSpec = field(default_factory=ModelSpec)
    query: QuerySpec = field(default_factory=QuerySpec)
    local: LocalSpec = field(default_factory=LocalSpec)
    strategy: StrategySpec = field(default_factory=StrategySpec)
    method: MethodSpec = field(default_factory=MethodSpec)
    simulation: SimulationSpec = field(default_factory=SimulationSpec)
    baselines: BaselinesSpec = field(default_factory=BaselinesSpec)
    control: bool = True
    seed: int = 0
    device: str = "auto"
    progress: bool = True
    checkpoint_dir: str | None = None
    resume: bool = False
    overwrite: bool = False
    partition_cache: str | None = None
    amp: str = "auto"

    def queriers(self) -> list[int]:
        """The querying clients of this run (``query.clients``, else ``query.client``)."""
        return self.query.queriers()

    def alone(self, client: int) -> ExperimentConfig:
        """The experiment as querying client ``client``'s run alone (what each querier of a shared run gets)."""
        return dataclasses.replace(self, query=self.query.alone(client))


def to_config(cfg: DictConfig | dict) -> ExperimentConfig:
    """Merge ``cfg`` into the schema, then :func:`validate`; the one conversion from Hydra to typed objects."""
    try:
        merged = OmegaConf.merge(OmegaConf.structured(ExperimentConfig), cfg)
        typed = OmegaConf.to_object(merged)
    except OmegaConfBaseException as err:
        key = _path_of(cfg, getattr(err, "key", None), getattr(err, "value", None)) or getattr(err, "full_key", None)
        raise ConfigError(str(key or "config"), getattr(err, "value", None), str(err).splitlines()[0]) from None
    validate(typed)  # type: ignore[arg-type]
    return typed  # type: ignore[return-value]


def _path_of(tree, key, value, prefix: str = "") -> str | None:
    """The dotted path of ``key`` holding ``value`` in ``tree`` (OmegaConf names items of a list by key alone)."""
    items = (
        tree.items()
        if isinstance(tree, dict | DictConfig)
        else enumerate(tree)
        if isinstance(tree, list | ListConfig)
        else []
    )
    for k, v in items:
        path = f"{prefix}{k}"
        if str(k) == str(key) and not isinstance(v, dict | list | DictConfig | ListConfig) and v == value:
            return path
        if (found := _path_of(v, key, value, path + ".")) is not None:
            return found
    return None


def load_config(overrides: list[str] | None = None) -> ExperimentConfig:
    """Compose ``conf/config.yaml`` with Hydra-style ``overrides`` (e.g. ``["seed=1", "method=qkt_paper"]``)."""
    return to_config(compose_config(overrides))


def compose_config(overrides: list[str] | None = None) -> DictConfig:
    """The Hydra-composed ``DictConfig`` for ``overrides``; a bad override is one :class:`ConfigError`."""
    try:
        if GlobalHydra.instance().is_initialized():
            return compose("config", overrides=list(overrides or []))
        with initialize_config_dir(config_dir=str(CONF_DIR), version_base=None):
            return compose("config", overrides=list(overrides or []))
    except HydraException as err:
        cause = f" ({str(err.__cause__).splitlines()[0]})" if err.__cause__ is not None else ""
        raise ConfigError("overrides", list(overrides or []), str(err).splitlines()[0] + cause) from None


def check_plain(tree, prefix: str = "") -> None:
    """Refuse any string value that still holds an interpolation (``${...}``).

    Configs travel as YAML and are parsed again by whoever receives them; a ``${...}`` left in a value (an escaped
    one on the command line resolves to the literal text) would be resolved there, with the receiver's
    environment: ``${oc.env:SECRET}`` in a device name would put a node's secret into its error reply.
    """
    if isinstance(tree, dict):
        for key, value in tree.items():
            check_plain(value, f"{prefix}{key}.")
    elif isinstance(tree, list | tuple):
        for i, value in enumerate(tree):
            check_plain(value, f"{prefix}{i}.")
    elif isinstance(tree, str) and "${" in tree:
        raise ConfigError(prefix[:-1] or "config", tree, "a plain value: no interpolation (${...}) is ever resolved "
                          "by whoever receives a config")  # fmt: skip


def validate(cfg: ExperimentConfig) -> None:
    """Refuse bad values with one :class:`ConfigError` naming key, value and what is allowed."""
    check_plain(asdict(cfg))
    for group in GROUPS:
        try:
            getattr(cfg, group).check()
        except ConfigError as err:
            raise err.under(group) from None
    require(
        re.fullmatch(r"auto|cpu|mps|cuda(:\d+)?", cfg.device) is not None,
        "device",
        cfg.device,
        "auto, cpu, cuda, cuda:N or mps",
    )
    require(str(cfg.amp).lower() in ("auto", "true", "false"), "amp", cfg.amp, "auto, true or false")
    require(
        not cfg.resume or bool(cfg.checkpoint_dir),
        "resume",
        cfg.resume,
        "false unless checkpoint_dir is set (that is where the finished steps are)",
    )
    require(
        cfg.method.student.kind != "merge" or cfg.local.shared_init,
        "method.student.kind",
        cfg.method.student.kind,
        "copy or compose unless local.shared_init=true (a weight merge needs models that started from one init)",
    )
    q, p = cfg.query, cfg.partition
    require(0 <= q.client < p.num_clients, "query.client", q.client, f"a client index in [0, {p.num_clients - 1}]")
    for k in q.clients or []:
        require(0 <= k < p.num_clients, "query.clients", list(q.clients), f"client indices in [0, {p.num_clients - 1}]")
    require(
        len(cfg.queriers()) == 1 or not (cfg.baselines.one_round or cfg.baselines.federated),
        "baselines",
        "one_round / federated",
        "none with several query.clients (the baselines run for one querying client: baselines=none)",
    )
    budget_bound = [m for m in cfg.baselines.one_round if m in ("vanilla_kd", "feddf")]
    require(
        not budget_bound or cfg.method.whole_network_budget() is not None,
        "baselines.one_round",
        budget_bound,
        f"baselines without them for method {cfg.method.name!r}: they train for the method's "
        "whole-network budget, and it trains only the head",
    )
    num_classes = KNOWN_NUM_CLASSES.get(cfg.dataset.name)
    if num_classes is not None:
        check_label_space(q, p, num_classes)
