"""Partitions (flwr-datasets) and the query cut on label tensors."""

import pytest
import torch

from qkt_flower.data import partition as partition_module
from qkt_flower.data.partition import cached_partition_indices, class_profile, partition_indices
from qkt_flower.data.query import make_query_scenario
from qkt_flower.errors import ConfigError

LABELS = torch.arange(10).repeat_interleave(50)  # 10 classes x 50 samples


def test_pathological_profiles_disjoint_and_seeded():
    parts = partition_indices(LABELS, "pathological", 10, seed=0, classes_per_client=3)
    for p in parts:
        assert int((class_profile(LABELS, p, 10) > 0).sum()) <= 3
    flat = torch.cat(parts)
    assert flat.numel() == flat.unique().numel()  # disjoint
    again = partition_indices(LABELS, "pathological", 10, seed=0, classes_per_client=3)
    assert all(torch.equal(a, b) for a, b in zip(parts, again, strict=True))
    other = partition_indices(LABELS, "pathological", 10, seed=1, classes_per_client=3)
    assert any(not torch.equal(a, b) for a, b in zip(parts, other, strict=True))


def test_dirichlet_is_skewed_and_iid_is_balanced():
    parts = partition_indices(LABELS, "dirichlet", 5, seed=0, alpha=0.1, min_partition_size=10)
    shares = [class_profile(LABELS, p, 10).max().item() / len(p) for p in parts]
    assert max(shares) > 0.3 and all(len(p) >= 10 for p in parts)
    iid = partition_indices(LABELS, "iid", 5, seed=0)
    assert sorted(len(p) for p in iid) == [100] * 5


@pytest.mark.parametrize(
    ("kwargs", "key"),
    [
        ({"kind": "pathological", "num_clients": 501, "classes_per_client": 2}, "partition.num_clients"),
        ({"kind": "dirichlet", "num_clients": 5, "alpha": 0.0}, "partition.alpha"),
        ({"kind": "pathological", "num_clients": 5, "classes_per_client": 11}, "partition.classes_per_client"),
        ({"kind": "spiral", "num_clients": 5}, "partition.kind"),
    ],
)
def test_bad_partitions_raise_config_error(kwargs, key):
    with pytest.raises(ConfigError) as err:
        partition_indices(LABELS, seed=0, **kwargs)
    assert err.value.key == key


def test_query_cut_moves_missing_shots_and_drops_surplus():
    parts = partition_indices(LABELS, "pathological", 10, seed=0, classes_per_client=3)
    counts = class_profile(LABELS, parts[0], 10)
    held = int(torch.nonzero(counts).flatten()[0])
    missing = int(torch.nonzero(counts == 0).flatten()[0])
    scen = make_query_scenario(LABELS, parts, 10, client=0, classes=[held, missing], num_query=2, shots=4, seed=0)
    after = class_profile(LABELS, scen.partitions[0], 10)
    assert after[held] == 4 and after[missing] == 4
    assert held not in scen.local_classes and missing not in scen.local_classes
    flat = torch.cat(scen.partitions)
    assert flat.numel() == flat.unique().numel()  # moved, not copied
    assert sum(len(p) for p in scen.partitions) == sum(len(p) for p in parts) - (int(counts[held]) - 4)


def test_query_zero_shots_and_fewest_choice():
    parts = partition_indices(LABELS, "pathological", 10, seed=0, classes_per_client=3)
    scen = make_query_scenario(LABELS, parts, 10, client=0, classes=None, num_query=1, shots=0, seed=0)
    assert class_profile(LABELS, scen.partitions[0], 10)[scen.query_classes[0]] == 0
    assert class_profile(LABELS, parts[0], 10)[scen.query_classes[0]] == 0  # a class it held fewest of (none)


@pytest.mark.parametrize(
    ("kwargs", "key"),
    [({"classes": [10]}, "query.classes"), ({"shots": -1}, "query.shots"), ({"client": 10}, "query.client"),
     ({"shots": 1000, "classes": [9]}, "query.shots")],
)  # fmt: skip
def test_bad_query_raises_config_error(kwargs, key):
    parts = partition_indices(LABELS, "pathological", 10, seed=0, classes_per_client=3)
    args = {"client": 0, "classes": None, "num_query": 1, "shots": 5, "seed": 0, **kwargs}
    with pytest.raises(ConfigError) as err:
        make_query_scenario(LABELS, parts, 10, **args)
    assert err.value.key == key


def test_partition_cache_returns_the_same_split_from_memory_and_disk(tmp_path, monkeypatch, caplog):
    labels = torch.arange(600) % 10
    options = {"alpha": 0.3, "min_partition_size": 10}
    fresh = partition_indices(labels, "dirichlet", 5, 3, **options)
    monkeypatch.setattr(partition_module, "_MEMO", {})
    first = cached_partition_indices(labels, "dirichlet", 5, 3, tmp_path, **options)
    files = list(tmp_path.glob("*.pt"))
    assert len(files) == 1 and all(torch.equal(a, b) for a, b in zip(fresh, first, strict=True))
    first[0][0] = -1  # callers may modify what they get: the cache keeps its own copy
    monkeypatch.setattr(partition_module, "_MEMO", {})  # a new process: read from disk
    from_disk = cached_partition_indices(labels, "dirichlet", 5, 3, tmp_path, **options)
    assert all(torch.equal(a, b) for a, b in zip(fresh, from_disk, strict=True))
    assert all(torch.equal(a, b) for a, b in zip(fresh, cached_partition_indices(labels, "dirichlet", 5, 3, tmp_path,
                                                                                  **options), strict=True))  # fmt: skip
    # another seed, client count or label vector is another entry
    cached_partition_indices(labels, "dirichlet", 5, 4, tmp_path, **options)
    cached_partition_indices(labels.flip(0), "dirichlet", 5, 3, tmp_path, **options)
    assert len(list(tmp_path.glob("*.pt"))) == 3
    # a corrupt file is recomputed and replaced; an unwritable folder only warns
    files[0].write_bytes(b"not a tensor file")
    monkeypatch.setattr(partition_module, "_MEMO", {})
    assert all(torch.equal(a, b) for a, b in zip(fresh, cached_partition_indices(labels, "dirichlet", 5, 3, tmp_path,
                                                                                  **options), strict=True))  # fmt: skip
    blocked = tmp_path / "file"
    blocked.write_text("")
    monkeypatch.setattr(partition_module, "_MEMO", {})
    parts = cached_partition_indices(labels, "dirichlet", 5, 3, blocked / "sub", **options)
    assert all(torch.equal(a, b) for a, b in zip(fresh, parts, strict=True))
    assert "not written" in caplog.text
