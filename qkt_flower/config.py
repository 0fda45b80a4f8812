"""Typed configuration: the schema of ``conf/`` and its validation, converted once at the boundary.

The YAML files in ``conf/`` hold every default; the dataclasses here only declare the types (no
defaults, so nothing is stated twice). :func:`to_config` merges a Hydra ``DictConfig`` into the
schema (type errors become :class:`~qkt_flower.errors.ConfigError` naming the key) and
:func:`validate` refuses bad values before any data is loaded or any model trained.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass
from pathlib import Path

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from qkt_flower.errors import ConfigError

log = logging.getLogger(__name__)

CONF_DIR = Path(__file__).resolve().parent.parent / "conf"

# Label-space sizes known without loading data (imagefolder is checked after loading).
KNOWN_NUM_CLASSES = {"fashion-mnist": 10, "cifar10": 10, "cifar100": 100, "pathmnist": 9}


@dataclass
class DatasetConfig:
    """Which data, where, and optional per-class caps for quick runs."""

    name: str
    root: str
    download: bool
    train_per_class: int | None
    test_per_class: int | None
    image_size: int | None


@dataclass
class PartitionConfig:
    """How the training split is spread over clients (flwr-datasets partitioners)."""

    kind: str
    num_clients: int
    classes_per_client: int | None
    assignment: str | None
    alpha: float | None
    min_partition_size: int | None


@dataclass
class ModelConfig:
    """Architecture name from :data:`qkt_flower.models.MODELS`."""

    name: str


@dataclass
class TrainConfig:
    """Budget and optimiser of one training loop."""

    epochs: int
    batch_size: int
    optimizer: str
    lr: float
    momentum: float
    weight_decay: float


@dataclass
class LocalConfig(TrainConfig):
    """Step 0 (every client's own training) and where to cache its models.

    ``outlier_exposure``: weight of a term that pulls the model's answer on patch-shuffled copies of its
    own images towards uniform (teachers less sure on what they never saw; 0 = plain cross-entropy).
    """

    cache_dir: str | None
    outlier_exposure: float = 0.0


@dataclass
class Phase1Config(TrainConfig):
    """Phase 1: weight of L_query, class-balanced sampling, samples per epoch (null = the transfer set's size)."""

    beta: float
    balanced: bool
    balance_over: str
    epoch_samples: int | None


@dataclass
class Phase2Config(Phase1Config):
    """Phase 2: adds the weight of L_keep."""

    gamma: float


@dataclass
class ProbeConfig:
    """The noise probe sent to teachers as (seed, shape, n, kind).

    ``with_training``: the probe does not depend on the query, so teachers can answer it as soon as
    they have trained, in their training reply, instead of in a round trip of its own.
    """

    n: int
    kind: str
    temperature: float
    standardize: bool
    seed: int
    batch_size: int
    with_training: bool = True


@dataclass
class MaskConfig:
    """Expert-mask rule and its parameter."""

    enabled: bool
    rule: str
    lam: float
    topk: int
    max_ratio: float
    profile_min_share: float


@dataclass
class KDConfig:
    """Collapsed KD settings shared by both phases."""

    temperature: float
    standardize: bool
    gate: bool
    consistent: bool
    weighting: str
    keep_balanced: bool
    keep_consistent: bool


@dataclass
class CalibrationConfig:
    """Query-bias calibration on the querying client's own local images (see ``qkt/calibrate.py``)."""

    max_false_query: float | None
    holdout: float
    augment: int


@dataclass
class SynthesisConfig:
    """Query-class images inverted from the experts (see ``qkt/synthesis.py``); ``per_class: 0`` = off."""

    per_class: int
    steps: int
    lr: float
    bn_weight: float
    tv_weight: float
    l2_weight: float
    jitter: int
    batch_size: int


@dataclass
class MixConfig:
    """Expert-labelled mixes of query shots and local images in phase 1 (see ``qkt/mixing.py``); weight 0 = off."""

    weight: float
    low: float
    high: float
    batch_size: int


@dataclass
class RelationConfig:
    """Relational (feature-level) KD from the experts in phase 1 / joint (see ``qkt/relation.py``); weight 0 = off."""

    weight: float


@dataclass
class StrategyConfig:
    """The QKT strategy."""

    name: str
    mode: str
    probe: ProbeConfig
    mask: MaskConfig
    kd: KDConfig
    phase1: Phase1Config
    phase2: Phase2Config
    control: bool
    synthesis: SynthesisConfig
    mix: MixConfig
    relation: RelationConfig
    augment_shots: int
    augment_local: int
    calibration: CalibrationConfig


@dataclass
class QueryConfig:
    """Who queries, for which classes, with how many shots."""

    client: int
    classes: list[int] | None
    num_classes: int
    shots: int
    min_local_count: int


@dataclass
class SimulationConfig:
    """Flower runtime: simulation size, per-client resources, and how long the server waits for nodes."""

    num_supernodes: int
    num_cpus: int
    num_gpus: float
    connect_timeout: float
    reply_timeout: float


@dataclass
class BaselinesConfig:
    """Baselines computed in the same run as QKT (one-round ones) or by Flower's strategies (federated ones)."""

    one_round: list[str]
    federated: list[str]
    rounds: int
    eval_rounds: list[int]
    epochs_per_round: int
    fedprox_mu: float
    finetune: bool


ONE_ROUND_BASELINES = ("ensemble", "vanilla_kd", "feddf")
FEDERATED_BASELINES = ("fedavg", "fedprox")


@dataclass
class ExperimentConfig:
    """One experiment: every config group plus the run-wide values."""

    dataset: DatasetConfig
    partition: PartitionConfig
    model: ModelConfig
    strategy: StrategyConfig
    query: QueryConfig
    simulation: SimulationConfig
    baselines: BaselinesConfig
    local: LocalConfig
    seed: int
    device: str
    progress: bool
    checkpoint_dir: str | None
    resume: bool
    partition_cache: str | None
    amp: str


def to_config(cfg: DictConfig | dict) -> ExperimentConfig:
    """Merge ``cfg`` into the schema, then :func:`validate`; the one conversion from Hydra to typed objects."""
    try:
        merged = OmegaConf.merge(OmegaConf.structured(ExperimentConfig), cfg)
        typed = OmegaConf.to_object(merged)
    except OmegaConfBaseException as err:
        key = getattr(err, "full_key", None) or "config"
        raise ConfigError(str(key), getattr(err, "value", None), str(err).splitlines()[0]) from None
    validate(typed)  # type: ignore[arg-type]
    return typed  # type: ignore[return-value]


def load_config(overrides: list[str] | None = None) -> ExperimentConfig:
    """Compose ``conf/config.yaml`` with Hydra-style ``overrides`` (e.g. ``["seed=1", "query=multi"]``)."""
    return to_config(compose_config(overrides))


def compose_config(overrides: list[str] | None = None) -> DictConfig:
    """The Hydra-composed ``DictConfig`` (unresolved interpolations resolved) for ``overrides``."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    if GlobalHydra.instance().is_initialized():
        return compose("config", overrides=list(overrides or []))
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base=None):
        return compose("config", overrides=list(overrides or []))


def _check(ok: bool, key: str, value: object, allowed: str) -> None:
    if not ok:
        raise ConfigError(key, value, allowed)


def _check_train(prefix: str, t: TrainConfig) -> None:
    _check(t.epochs >= 0, f"{prefix}.epochs", t.epochs, "an integer >= 0")
    _check(t.batch_size >= 1, f"{prefix}.batch_size", t.batch_size, "an integer >= 1")
    _check(t.optimizer in ("adam", "sgd"), f"{prefix}.optimizer", t.optimizer, "adam or sgd")
    _check(t.lr > 0, f"{prefix}.lr", t.lr, "a float > 0")
    _check(t.weight_decay >= 0, f"{prefix}.weight_decay", t.weight_decay, "a float >= 0")


def validate(cfg: ExperimentConfig) -> None:
    """Refuse bad values with one :class:`ConfigError` naming key, value and what is allowed."""
    from qkt_flower.data.datasets import DATASETS
    from qkt_flower.data.partition import PARTITIONS
    from qkt_flower.models import MODELS
    from qkt_flower.qkt.mask import MASK_RULES
    from qkt_flower.qkt.phases import MODES, WEIGHTINGS
    from qkt_flower.qkt.probe import NOISE_KINDS

    d, p, s, q = cfg.dataset, cfg.partition, cfg.strategy, cfg.query
    _check(d.name in DATASETS, "dataset.name", d.name, f"one of {list(DATASETS)}")
    for key in ("train_per_class", "test_per_class"):
        value = getattr(d, key)
        _check(value is None or value >= 1, f"dataset.{key}", value, "null or an integer >= 1")
    _check(cfg.model.name in MODELS, "model.name", cfg.model.name, f"one of {sorted(MODELS)}")
    _check(p.kind in PARTITIONS, "partition.kind", p.kind, f"one of {list(PARTITIONS)}")
    _check(
        p.num_clients >= 2, "partition.num_clients", p.num_clients, "an integer >= 2 (a querying client and a teacher)"
    )
    if p.kind == "dirichlet":
        _check(p.alpha is not None and p.alpha > 0, "partition.alpha", p.alpha, "a float > 0")
    if p.kind == "pathological":
        _check(
            p.classes_per_client is not None and p.classes_per_client >= 1,
            "partition.classes_per_client",
            p.classes_per_client,
            "an integer >= 1",
        )
    _check(
        cfg.device == "auto" or cfg.device.split(":")[0] in ("cpu", "cuda", "mps"),
        "device",
        cfg.device,
        "auto, cpu, cuda, cuda:N or mps",
    )
    _check(str(cfg.amp).lower() in ("auto", "true", "false"), "amp", cfg.amp, "auto, true or false")
    _check(not cfg.resume or bool(cfg.checkpoint_dir), "resume", cfg.resume,
           "false unless checkpoint_dir is set (that is where the finished steps are)")  # fmt: skip
    _check_train("local", cfg.local)
    _check(cfg.local.outlier_exposure >= 0, "local.outlier_exposure", cfg.local.outlier_exposure, "a float >= 0")
    _check_train("strategy.phase1", s.phase1)
    _check_train("strategy.phase2", s.phase2)
    _check(s.mode in MODES, "strategy.mode", s.mode, f"one of {list(MODES)}")
    _check(s.probe.n >= 1, "strategy.probe.n", s.probe.n, "an integer >= 1")
    _check(s.probe.kind in NOISE_KINDS, "strategy.probe.kind", s.probe.kind, f"one of {list(NOISE_KINDS)}")
    _check(s.probe.temperature > 0, "strategy.probe.temperature", s.probe.temperature, "a float > 0")
    _check(s.mask.rule in MASK_RULES, "strategy.mask.rule", s.mask.rule, f"one of {sorted(MASK_RULES)}")
    _check(
        s.mask.lam > 0,
        "strategy.mask.lam",
        s.mask.lam,
        "a float > 0 (a class is an expert class if its score >= lam/C)",
    )
    _check(s.mask.topk >= 1, "strategy.mask.topk", s.mask.topk, "an integer >= 1")
    _check(0 < s.mask.max_ratio <= 1, "strategy.mask.max_ratio", s.mask.max_ratio, "a float in (0, 1]")
    _check(
        0 < s.mask.profile_min_share < 1,
        "strategy.mask.profile_min_share",
        s.mask.profile_min_share,
        "a float in (0, 1)",
    )
    _check(s.kd.temperature > 0, "strategy.kd.temperature", s.kd.temperature, "a float > 0")
    _check(s.kd.weighting in WEIGHTINGS, "strategy.kd.weighting", s.kd.weighting, f"one of {list(WEIGHTINGS)}")
    limit = s.calibration.max_false_query
    _check(limit is None or 0 <= limit < 1, "strategy.calibration.max_false_query", limit, "null or a float in [0, 1)")
    _check(0 <= s.calibration.holdout < 1, "strategy.calibration.holdout", s.calibration.holdout, "a float in [0, 1)")
    _check(s.calibration.augment >= 0, "strategy.calibration.augment", s.calibration.augment, "an integer >= 0")
    _check(s.mix.weight >= 0, "strategy.mix.weight", s.mix.weight, "a float >= 0")
    _check(0 <= s.mix.low <= s.mix.high <= 1, "strategy.mix.low/high", (s.mix.low, s.mix.high), "0 <= low <= high <= 1")
    _check(s.mix.batch_size >= 1, "strategy.mix.batch_size", s.mix.batch_size, "an integer >= 1")
    _check(s.relation.weight >= 0, "strategy.relation.weight", s.relation.weight, "a float >= 0")
    _check(s.augment_shots >= 0, "strategy.augment_shots", s.augment_shots, "an integer >= 0")
    _check(s.augment_local >= 0, "strategy.augment_local", s.augment_local, "an integer >= 0")
    _check(s.synthesis.per_class >= 0, "strategy.synthesis.per_class", s.synthesis.per_class, "an integer >= 0")
    _check(s.synthesis.steps >= 1, "strategy.synthesis.steps", s.synthesis.steps, "an integer >= 1")
    _check(s.synthesis.lr > 0, "strategy.synthesis.lr", s.synthesis.lr, "a float > 0")
    for key, phase in (("phase1", s.phase1), ("phase2", s.phase2)):
        _check(phase.balance_over in ("task", "present"), f"strategy.{key}.balance_over", phase.balance_over,
               "task (balance query + local classes) or present (every class present)")  # fmt: skip
        _check(phase.beta >= 0, f"strategy.{key}.beta", phase.beta, "a float >= 0")
        _check(phase.epoch_samples is None or phase.epoch_samples >= 1, f"strategy.{key}.epoch_samples",
               phase.epoch_samples, "null (the transfer set's size) or an integer >= 1")  # fmt: skip
        strength = phase.beta * s.kd.temperature**2
        _check(
            strength < 80,
            f"strategy.{key}.beta",
            phase.beta,
            f"beta * kd.temperature^2 < 80 (it is {strength:g}; ~80 made the model predict the query class "
            "for everything)",
        )
        if strength >= 20:
            log.warning(
                "strategy.%s.beta * kd.temperature^2 = %g is large; query distillation may swamp CE", key, strength
            )
    _check(s.phase2.gamma >= 0, "strategy.phase2.gamma", s.phase2.gamma, "a float >= 0")
    _check(0 <= q.client < p.num_clients, "query.client", q.client, f"a client index in [0, {p.num_clients - 1}]")
    b = cfg.baselines
    bad = [m for m in b.one_round if m not in ONE_ROUND_BASELINES]
    _check(not bad, "baselines.one_round", list(b.one_round), f"a list of {list(ONE_ROUND_BASELINES)}")
    bad = [m for m in b.federated if m not in FEDERATED_BASELINES]
    _check(not bad, "baselines.federated", list(b.federated), f"a list of {list(FEDERATED_BASELINES)}")
    _check(b.rounds >= 1, "baselines.rounds", b.rounds, "an integer >= 1")
    _check(
        bool(b.eval_rounds) and all(1 <= r <= b.rounds for r in b.eval_rounds),
        "baselines.eval_rounds",
        list(b.eval_rounds),
        f"a non-empty list of rounds in [1, baselines.rounds={b.rounds}]",
    )
    _check(b.epochs_per_round >= 1, "baselines.epochs_per_round", b.epochs_per_round, "an integer >= 1")
    _check(b.fedprox_mu >= 0, "baselines.fedprox_mu", b.fedprox_mu, "a float >= 0")
    sim = cfg.simulation
    _check(sim.num_cpus >= 1, "simulation.num_cpus", sim.num_cpus, "an integer >= 1 (CPUs per simulated client)")
    _check(sim.num_gpus >= 0, "simulation.num_gpus", sim.num_gpus, "a float >= 0 (fractions share a GPU)")
    for key in ("connect_timeout", "reply_timeout"):
        _check(getattr(sim, key) > 0, f"simulation.{key}", getattr(sim, key), "seconds > 0")
    _check(q.shots >= 0, "query.shots", q.shots, "an integer >= 0")
    _check(q.min_local_count >= 1, "query.min_local_count", q.min_local_count, "an integer >= 1")
    num_classes = KNOWN_NUM_CLASSES.get(d.name)
    if num_classes is not None:
        validate_label_space(cfg, num_classes)


def validate_label_space(cfg: ExperimentConfig, num_classes: int, num_train: int | None = None) -> None:
    """Checks that need the label space (and, once loaded, the number of training samples)."""
    q = cfg.query
    if q.classes is not None:
        bad = [c for c in q.classes if not 0 <= c < num_classes]
        _check(
            bool(q.classes) and not bad,
            "query.classes",
            list(q.classes),
            f"a non-empty list of class ids in [0, {num_classes - 1}]",
        )
    else:
        _check(
            1 <= q.num_classes < num_classes,
            "query.num_classes",
            q.num_classes,
            f"an integer in [1, {num_classes - 1}]",
        )
    if cfg.partition.classes_per_client is not None and cfg.partition.kind == "pathological":
        _check(
            cfg.partition.classes_per_client <= num_classes,
            "partition.classes_per_client",
            cfg.partition.classes_per_client,
            f"an integer in [1, {num_classes}]",
        )
    if num_train is not None:
        _check(
            cfg.partition.num_clients <= num_train,
            "partition.num_clients",
            cfg.partition.num_clients,
            f"at most the {num_train} training samples",
        )


def optim_spec(t: TrainConfig):
    """The engine's :class:`~qkt_flower.qkt.engine.OptimSpec` for a training config."""
    from qkt_flower.qkt.engine import OptimSpec

    return OptimSpec(name=t.optimizer, lr=t.lr, momentum=t.momentum, weight_decay=t.weight_decay)


def qkt_spec(s: StrategyConfig):
    """The algorithm's :class:`~qkt_flower.qkt.phases.QKTSpec` for the strategy config."""
    from qkt_flower.qkt.calibrate import CalibrationSpec
    from qkt_flower.qkt.mixing import MixSpec
    from qkt_flower.qkt.phases import PhaseSpec, QKTSpec
    from qkt_flower.qkt.relation import RelationSpec
    from qkt_flower.qkt.synthesis import SynthesisSpec

    def phase(p: Phase1Config, gamma: float = 0.0) -> PhaseSpec:
        return PhaseSpec(p.epochs, p.batch_size, optim_spec(p), beta=p.beta, gamma=gamma, balanced=p.balanced,
                         balance_over=p.balance_over, epoch_samples=p.epoch_samples)  # fmt: skip

    return QKTSpec(
        mode=s.mode,
        phase1=phase(s.phase1),
        phase2=phase(s.phase2, s.phase2.gamma),
        temperature=s.kd.temperature,
        standardize=s.kd.standardize,
        gate=s.kd.gate,
        consistent=s.kd.consistent,
        weighting=s.kd.weighting,
        keep_balanced=s.kd.keep_balanced,
        keep_consistent=s.kd.keep_consistent,
        calibration=CalibrationSpec(**asdict(s.calibration)),
        synthesis=SynthesisSpec(**asdict(s.synthesis)),
        augment_shots=s.augment_shots,
        augment_local=s.augment_local,
        mix=MixSpec(**asdict(s.mix)),
        relation=RelationSpec(**asdict(s.relation)),
    )
