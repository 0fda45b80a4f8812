"""The data layer's specs: defaults equal to the default YAML files, checks keyed relative to the spec."""

from dataclasses import asdict
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from qkt_flower.data.datasets import DatasetSpec
from qkt_flower.data.partition import PartitionSpec
from qkt_flower.data.query import QuerySpec, check_label_space
from qkt_flower.errors import ConfigError, require
from qkt_flower.models import ModelSpec

CONF = Path(__file__).resolve().parents[2] / "conf"


@pytest.mark.parametrize(
    ("spec", "yaml"),
    [
        (DatasetSpec, "dataset/fashion_mnist.yaml"),
        (PartitionSpec, "partition/pathological.yaml"),
        (QuerySpec, "query/single.yaml"),
        (ModelSpec, "model/cnn.yaml"),
    ],
)
def test_defaults_are_those_of_the_default_yaml(spec, yaml):
    assert asdict(spec()) == OmegaConf.to_container(OmegaConf.load(CONF / yaml))
    spec().check()


@pytest.mark.parametrize(
    ("spec", "key"),
    [
        (DatasetSpec(name="foo"), "name"),
        (DatasetSpec(train_per_class=0), "train_per_class"),
        (DatasetSpec(test_per_class=0), "test_per_class"),
        (PartitionSpec(kind="x"), "kind"),
        (PartitionSpec(num_clients=1), "num_clients"),
        (PartitionSpec(kind="dirichlet", alpha=None), "alpha"),
        (PartitionSpec(kind="dirichlet", alpha=0.0), "alpha"),
        (PartitionSpec(classes_per_client=0), "classes_per_client"),
        (QuerySpec(shots=-1), "shots"),
        (QuerySpec(min_local_count=0), "min_local_count"),
        (ModelSpec(name="vgg"), "name"),
    ],
)
def test_check_names_the_field(spec, key):
    with pytest.raises(ConfigError) as err:
        spec.check()
    assert err.value.key == key


def test_under_prefixes_the_key_and_keeps_the_rest():
    err = ConfigError("name", "foo", "one of [...]").under("dataset")
    assert (err.key, err.value, err.allowed) == ("dataset.name", "foo", "one of [...]")
    assert str(err).startswith("dataset.name='foo'")
    require(True, "k", 1, "anything")
    with pytest.raises(ConfigError, match="k=1 is not allowed: never"):
        require(False, "k", 1, "never")


@pytest.mark.parametrize(
    ("query", "partition", "num_train", "key"),
    [
        (QuerySpec(classes=[10]), PartitionSpec(), None, "query.classes"),
        (QuerySpec(classes=[]), PartitionSpec(), None, "query.classes"),
        (QuerySpec(num_classes=10), PartitionSpec(), None, "query.num_classes"),
        (QuerySpec(), PartitionSpec(classes_per_client=11), None, "partition.classes_per_client"),
        (QuerySpec(), PartitionSpec(num_clients=20), 10, "partition.num_clients"),
    ],
)
def test_label_space_checks_use_full_keys(query, partition, num_train, key):
    with pytest.raises(ConfigError) as err:
        check_label_space(query, partition, 10, num_train=num_train)
    assert err.value.key == key


def test_label_space_accepts_the_defaults():
    check_label_space(QuerySpec(), PartitionSpec(), 10, num_train=100)
    check_label_space(QuerySpec(), PartitionSpec(kind="iid", classes_per_client=11), 10)  # only pathological uses it
