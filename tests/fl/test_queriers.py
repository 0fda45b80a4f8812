"""Several querying clients in one Flower run: one training step and one probe round, each querier's numbers
exactly those of its run alone."""

import json
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from qkt_flower.config import compose_config, to_config
from qkt_flower.errors import ConfigError
from qkt_flower.fl.simulation import simulate
from qkt_flower.reference import run_reference
from qkt_flower.results import load_results, per_querier

needs_fmnist = pytest.mark.skipif(not Path("/usr/share/datasets/fashion-mnist").is_dir(), reason="needs Fashion-MNIST")

OVERRIDES = [
    "dataset.train_per_class=200", "dataset.test_per_class=100", "local.epochs=1", "progress=false",
    "partition.num_clients=5", "query.clients=[0,3]", "strategy.probe.with_training=false", "checkpoint_dir=null",
]  # fmt: skip


@pytest.fixture(scope="module")
def shared_run(tmp_path_factory):
    dcfg = compose_config([*OVERRIDES, "local.cache_dir=null"])  # trains: the samples are counted below
    out = tmp_path_factory.mktemp("queriers")
    simulate(to_config(dcfg), OmegaConf.to_yaml(dcfg, resolve=True), out)
    return to_config(dcfg), load_results(out)


@needs_fmnist
def test_each_querier_gets_the_numbers_of_its_run_alone(shared_run):
    cfg, run = shared_run
    assert run["dropped"] == {} and sorted(run["queriers"]) == ["0", "3"]
    for q in (0, 3):
        alone, mine = run_reference(cfg.alone(q)), run["queriers"][str(q)]
        assert mine["querying_client"] == q and mine["query_classes"] == alone["query_classes"]
        assert {str(k): v for k, v in alone["probe"]["masks"].items()} == mine["probe"]["masks"]
        assert {str(c): v for c, v in alone["experts"].items()} == mine["experts"]
        for stage in ("before", "after", "control"):
            for key in ("query_acc", "local_acc", "overall_acc"):
                assert mine[stage][key] == pytest.approx(alone[stage][key], abs=1e-6), (q, stage, key)
        # this querier's own books: the weights of its experts and its query step, nothing of the other's
        assert set(mine["bytes"]["sent"]) == {"weights", "qkt"}
        assert mine["bytes"]["received"]["weights"] > 0


@needs_fmnist
def test_one_training_step_and_one_probe_round_serve_both(shared_run):
    cfg, run = shared_run
    cost = run["probe_cost"]
    assert cost["probe_rounds"] == 1 and cost["answers_with_training"] == 0
    # a teacher model answers once though both queriers may meet it: 4 teachers each, the two queriers'
    # own models and (here) a donor whose shots moved are met by one querier only
    assert 4 <= cost["probe_messages"] < 8
    assert set(run["bytes"]["sent"]) == {"train", "probe"}
    # the two queriers (and any donor of moved shots) trained a model per partition they hold: each querier's
    # uncut partition too, so more samples than the federation holds
    assert run["local_training"]["samples"] > cfg.local.epochs * 200 * 10


def test_several_queriers_are_refused_where_they_cannot_run():
    with pytest.raises(ConfigError, match=r"^query\.clients"):
        to_config(compose_config(["query.clients=[0,0]"]))
    with pytest.raises(ConfigError, match=r"^query\.clients.*query\.client"):  # one querier is query.client
        to_config(compose_config(["query.clients=[3]"]))
    with pytest.raises(ConfigError, match=r"^query\.clients"):
        to_config(compose_config(["query.clients=[0,30]"]))
    with pytest.raises(ConfigError, match=r"^baselines"):
        to_config(compose_config(["query.clients=[0,3]", "baselines=all"]))


def test_per_querier_rows_carry_the_shared_books_and_skip_a_failed_querier(tmp_path):
    """Each querier's row looks like a run alone: its own steps' books plus the shared train / probe ones."""
    ok = {
        "before": {"query_acc": 0.0},
        "after": {"query_acc": 0.5},
        "querying_client": 0,
        "bytes": {"sent": {"weights": 10, "qkt": 5}, "received": {"weights": 100}},
        "seconds": {"qkt": 2.0},
    }
    failed = {"querying_client": 3, "metrics": None, "bytes": {"sent": {}, "received": {}}, "seconds": {}}
    run = {"runtime": "flower", "seed": 0, "bytes": {"sent": {"train": 7, "probe": 1}, "received": {"train": 9}},
           "seconds": {"train": 30.0, "total": 40.0}, "queriers": {"0": ok, "3": failed}}  # fmt: skip
    (tmp_path / "results.json").write_text(json.dumps(run))
    (row,) = per_querier(load_results(tmp_path))  # the file is read; the failed querier is left out
    assert row["querying_client"] == 0 and row["seed"] == 0
    assert row["bytes"]["sent"] == {"train": 7, "probe": 1, "weights": 10, "qkt": 5}
    assert row["bytes"]["received"] == {"train": 9, "weights": 100}
    assert row["seconds"] == {"train": 30.0, "total": 40.0, "qkt": 2.0}
    run["queriers"]["0"] = failed
    (tmp_path / "results.json").write_text(json.dumps(run))
    with pytest.raises(ValueError, match="no 'before' / 'after'"):
        load_results(tmp_path)
