"""Baselines on the Flower grid (Ray simulation), after QKT, in the same run."""

from pathlib import Path

import pytest
from omegaconf import OmegaConf

from qkt_flower.config import compose_config, to_config
from qkt_flower.fl.simulation import simulate
from qkt_flower.reference import run_reference
from qkt_flower.results import load_results

pytestmark = pytest.mark.skipif(not Path("/usr/share/datasets/fashion-mnist").is_dir(), reason="needs Fashion-MNIST")

OVERRIDES = [
    "dataset.train_per_class=200", "dataset.test_per_class=100", "local.epochs=1", "progress=false",
    "partition.num_clients=5", "control=false", "baselines=all", "baselines.rounds=2",
    "baselines.eval_rounds=[1,2]",
]  # fmt: skip


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    out = tmp_path_factory.mktemp("baselines")
    dcfg = compose_config(OVERRIDES)
    simulate(to_config(dcfg), OmegaConf.to_yaml(dcfg, resolve=True), out)
    return load_results(out)


def test_every_baseline_reports_test_view_metrics(run):
    b = run["baselines"]
    assert set(b["one_round"]) == {"ensemble", "vanilla_kd", "feddf"}
    assert all(m["teachers"] == 4 for m in b["one_round"].values())
    for name in ("fedavg", "fedprox"):
        assert set(b[name]["rounds"]) == {"1", "2"}
        for rnd in b[name]["rounds"].values():
            assert 0.0 <= rnd["global"]["query_acc"] <= 1.0 and 0.0 <= rnd["finetuned"]["local_acc"] <= 1.0
    assert run["dropped"] == {}
    # the results.json shape both runtimes share: every evaluated model is a top-level object
    assert run["runtime"] == "flower" and {"before", "after"} <= set(run)
    assert run["ensemble"] == b["one_round"]["ensemble"]
    assert run["fedavg_2rd_ft"] == b["fedavg"]["rounds"]["2"]["finetuned"]
    assert run["fedprox_1rd"] == b["fedprox"]["rounds"]["1"]["global"]


def test_one_round_baselines_agree_with_the_reference(run):
    ref = run_reference(to_config(compose_config(OVERRIDES)))
    for name, metrics in run["baselines"]["one_round"].items():
        for key in ("query_acc", "local_acc", "overall_acc"):
            assert metrics[key] == pytest.approx(ref[name][key], abs=1e-6), (name, key)


def test_bytes_qkt_fetches_less_than_the_baselines(run):
    """QKT ships only the experts' weights; the one-round baselines every teacher's; FedAvg all nodes, twice."""
    b = run["bytes"]["received"]
    assert b["weights"] < b["baselines.weights"]
    fedavg_round = run["baselines"]["fedavg"]["rounds"]["1"]["bytes"]
    qkt_total = sum(run["bytes"]["sent"].get(k, 0) + run["bytes"]["received"].get(k, 0)
                    for k in ("train", "probe", "weights", "qkt"))  # fmt: skip
    assert qkt_total < fedavg_round


def test_paper_table_rows_from_a_real_run(run):
    from qkt_flower.experiments import paper as paper_table

    rows = paper_table.method_rows(run)
    methods = [r["method"] for r in rows]
    assert methods[:2] == ["local model", "QKT"]
    assert {"ensemble (all models)", "vanilla KD (all teachers)", "FedDF fusion", "FedAvg (1 rd)",
            "FedAvg (2 rd) + FT", "FedProx (2 rd)"} <= set(methods)  # fmt: skip
    by = {r["method"]: r for r in rows}
    assert by["QKT"]["query_acc"] == pytest.approx(100 * run["after"]["query_acc"])
    assert by["QKT"]["bytes"] < by["FedDF fusion"]["bytes"] < by["FedAvg (2 rd)"]["bytes"]
    table = paper_table.aggregate([{**r, "seed": s} for s in (0, 1) for r in rows], ("method",))
    assert all(t["runs"] == 2 and t["query_acc_std"] == 0.0 for t in table)
    assert "| QKT |" in paper_table.markdown(table, "t")


def test_fedavg_aggregates_in_client_order_not_arrival_order():
    """The same replies in any arrival order give bit-identical global weights (else seeds stop reproducing)."""
    import random
    import time as _time

    import numpy as np
    import torch
    from flwr.app import ArrayRecord, Message, Metadata, MetricRecord, RecordDict

    from qkt_flower.fl.baselines import OrderedFedAvg

    rng = np.random.default_rng(0)
    replies = []
    for k in range(6):
        weights = torch.from_numpy(rng.standard_normal(1000).astype(np.float32))
        content = RecordDict({"arrays": ArrayRecord({"w": weights}),
                              "metrics": MetricRecord({"num-examples": int(rng.integers(1, 10_000))})})  # fmt: skip
        meta = Metadata(run_id=1, message_id=f"m{k}", src_node_id=1000 + k, dst_node_id=0, reply_to_message_id="x",
                        group_id="1", created_at=_time.time(), ttl=60.0, message_type="train")  # fmt: skip
        replies.append(Message(content=content, metadata=meta))
    strategy = OrderedFedAvg()
    strategy.client_of = {1000 + k: k for k in range(6)}
    first = strategy.aggregate_train(1, replies)[0].to_torch_state_dict()["w"].numpy()
    for seed in range(5):
        shuffled = replies[:]
        random.Random(seed).shuffle(shuffled)
        assert np.array_equal(strategy.aggregate_train(1, shuffled)[0].to_torch_state_dict()["w"].numpy(), first)
