"""Bad configuration is refused before any training, naming the key."""

import pytest

from qkt_flower.config import load_config
from qkt_flower.data.federation import build_federation
from qkt_flower.errors import ConfigError


@pytest.mark.parametrize(
    ("override", "key"),
    [
        ("dataset.name=foo", "dataset.name"),
        ("model.name=vgg", "model.name"),
        ("query.classes=[10]", "query.classes"),
        ("strategy.mask.lam=0", "strategy.mask.lam"),
        ("strategy.mask.lam=-1", "strategy.mask.lam"),
        ("strategy.mask.lam=abc", "strategy.mask.lam"),
        ("query.shots=-1", "query.shots"),
        ("partition.num_clients=1", "partition.num_clients"),
        ("query.client=10", "query.client"),
        ("strategy.phase1.beta=20", "strategy.phase1.beta"),
        ("strategy.mode=nope", "strategy.mode"),
        ("device=tpu", "device"),
        ("strategy.calibration.max_false_query=1.5", "strategy.calibration.max_false_query"),
        ("strategy.calibration.holdout=-0.1", "strategy.calibration.holdout"),
        ("strategy.calibration.augment=-1", "strategy.calibration.augment"),
        ("strategy.augment_local=-1", "strategy.augment_local"),
        ("strategy.phase1.balance_over=all", "strategy.phase1.balance_over"),
        ("strategy.synthesis.per_class=-1", "strategy.synthesis.per_class"),
        ("strategy.augment_shots=-2", "strategy.augment_shots"),
        ("strategy.kd.weighting=loudest", "strategy.kd.weighting"),
        ("local.outlier_exposure=-0.5", "local.outlier_exposure"),
        ("strategy.phase2.epoch_samples=0", "strategy.phase2.epoch_samples"),
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


def test_more_clients_than_samples_refused_before_training():
    cfg = load_config(["dataset.train_per_class=1", "partition.num_clients=20"])
    with pytest.raises(ConfigError) as err:
        build_federation(cfg)
    assert err.value.key == "partition.num_clients"
