"""Bad configuration is refused before any training, naming the key."""

import pytest

from qkt_flower.config import CONF_DIR, load_config
from qkt_flower.data.federation import build_federation
from qkt_flower.errors import ConfigError


@pytest.mark.parametrize(
    ("override", "key"),
    [
        ("dataset.name=foo", "dataset.name"),
        ("model.name=vgg", "model.name"),
        ("query.classes=[10]", "query.classes"),
        ("query.classes=[3,3]", "query.classes"),
        ("device=cuda:abc", "device"),
        ("strategy.mask.lam=0", "strategy.mask.lam"),
        ("strategy.mask.lam=-1", "strategy.mask.lam"),
        ("strategy.mask.lam=abc", "strategy.mask.lam"),
        ("query.shots=-1", "query.shots"),
        ("partition.num_clients=1", "partition.num_clients"),
        ("query.client=10", "query.client"),
        ("method.terms.query.weight=20", "method.terms.query.weight"),
        ("method=nope", "overrides"),
        ("device=tpu", "device"),
        ("method.calibration.max_false_query=1.5", "method.calibration.max_false_query"),
        ("method.phases.0.trains=body", "method.phases.0.trains"),
        ("method.calibration.augment=-1", "method.calibration.augment"),
        ("method.transfer.augment_local=-1", "method.transfer.augment_local"),
        ("method.phases.0.terms=[ce,nope]", "method.phases.0.terms"),
        ("method.terms.keep.temperature=0", "method.terms.keep.temperature"),
        ("method.transfer.augment_shots=-2", "method.transfer.augment_shots"),
        ("strategy.probe.kind=pink", "strategy.probe.kind"),
        ("local.lr=0", "local.lr"),
        ("method.phases.0.epoch_samples=0", "method.phases.0.epoch_samples"),
        ("simulation.query_timeout=0", "simulation.query_timeout"),
    ],
)
def test_bad_values_raise_config_error(override, key):
    with pytest.raises(ConfigError) as err:
        load_config([override])
    assert err.value.key == key
    assert key in str(err.value)


def test_defaults_are_valid():
    cfg = load_config()
    assert cfg.dataset.name == "fashion-mnist" and cfg.strategy.mask.lam > 0


def test_removed_options_are_refused_not_ignored():
    for override in ("strategy.mode=joint", "strategy.kd.gate=false", "local.outlier_exposure=0.5"):
        with pytest.raises(ConfigError) as err:
            load_config([override])
        assert err.value.key == "overrides"


def test_the_default_method_is_the_specs_own_defaults():
    """conf/method/qkt.yaml states every value of today's default; the dataclasses carry the same defaults,
    so the Python API and the YAML cannot drift apart."""
    from qkt_flower.qkt.local import LocalSpec
    from qkt_flower.qkt.method import MethodSpec

    cfg = load_config()
    assert cfg.method == MethodSpec() and cfg.local == LocalSpec()
    assert cfg.strategy.mask == type(cfg.strategy.mask)()
    assert cfg.strategy.probe == type(cfg.strategy.probe)(seed=cfg.seed)


@pytest.mark.parametrize("preset", sorted(p.stem for p in (CONF_DIR / "method").glob("*.yaml")))
def test_every_method_preset_composes_and_validates(preset):
    cfg = load_config([f"method={preset}", *(["local.shared_init=true"] if preset == "qkt_merge" else [])])
    assert cfg.method.name == preset and cfg.method.phases


def test_every_named_variant_composes():
    from qkt_flower.experiments.variants import load_variants

    variants, lists = load_variants()
    assert set(lists["grid"]) <= set(variants) and set(lists["ablations"]) <= set(variants)
    for name, overrides in variants.items():
        merge = "method=qkt_merge" in overrides  # a merge needs shared-init local models: the grid's --extra
        cfg = load_config([*overrides, "local.shared_init=true"] if merge else overrides)
        assert cfg.method.teachers == (not name.startswith("balanced-CE control")), (
            name
        )  # a control never sees a teacher


def test_a_method_that_cannot_run_is_refused_before_training():
    """Checks that span groups: baselines that need a whole-network budget, duplicate phase names, a phase with
    nothing to minimise."""
    for overrides, key in (
        (["method=qkt_light", "baselines=all"], "baselines.one_round"),
        (["method=qkt_two_phase", "method.phases.1.name=phase1"], "method.phases"),
        (["method=qkt_phase1", "method.terms.ce.weight=0", "method.terms.query.weight=0"], "method.phases.0.terms"),
        (["method.phases.0.epochs=abc"], "method.phases.0.epochs"),
    ):
        with pytest.raises(ConfigError) as err:
            load_config(overrides)
        assert err.value.key == key, overrides
    with pytest.raises(ConfigError, match="list index out of range"):
        load_config(["method.phases.1.epochs=3"])  # the default method has one phase: presets add phases


def test_the_control_of_a_head_only_method_trains_the_head_with_ce():
    control = load_config(["method=qkt_light"]).method.without_teachers()
    assert [(p.trains, p.terms, p.epochs) for p in control.phases] == [("head", ["ce"], 5)]


def test_more_clients_than_samples_refused_before_training():
    cfg = load_config(["dataset.train_per_class=1", "partition.num_clients=20"])
    with pytest.raises(ConfigError) as err:
        build_federation(cfg.dataset, cfg.partition, cfg.query, cfg.seed, cfg.partition_cache)
    assert err.value.key == "partition.num_clients"
