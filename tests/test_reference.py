"""End-to-end runs of the centralised reference runner on real Fashion-MNIST (capped per class)."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from qkt_flower.config import load_config
from qkt_flower.reference import run_reference

FMNIST = Path("/usr/share/datasets/fashion-mnist")
pytestmark = pytest.mark.skipif(not FMNIST.is_dir(), reason="needs apt-get install dataset-fashion-mnist")

SMALL = ["dataset.train_per_class=300", "dataset.test_per_class=200", "local.epochs=2", "progress=false"]


@pytest.fixture(scope="module")
def small_run():
    return run_reference(load_config(SMALL))


def test_qkt_learns_the_query_class(small_run):
    """On 300 samples per class the query (coat) has a look-alike among q's local classes (shirt): a net gain,
    local kept up to the share of its local images the calibration lets be called the query class (5 %), plus
    one point."""
    before, after = small_run["before"], small_run["after"]
    allowed = load_config(SMALL).method.calibration.max_false_query
    assert before["query_acc"] < 0.2  # q has 5 shots of the query class: its local model barely knows it
    assert after["query_acc"] > before["query_acc"] + 0.15
    assert after["local_acc"] >= before["local_acc"] - allowed - 0.01
    assert after["mean_acc"] > before["mean_acc"] + 0.05


# Seven passes over the transfer set (the budget before epoch_samples): on this cell, uncalibrated, q calls many of
# its shirts and T-shirts "coat" (README, interference grid); with today's 320 draws per epoch the calibration
# has nothing to correct here (shift 0), so its ablation runs on the budget where it acts.
DATA_EPOCHS = [*SMALL, "method.phases.0.epoch_samples=null", "control=false"]


def test_without_calibration_the_query_is_learnt_at_a_local_cost(small_run):
    """The ablation that shows why calibration is on: more query accuracy, local accuracy lost to the look-alike."""
    calibrated = run_reference(load_config(DATA_EPOCHS))
    raw = run_reference(load_config([*DATA_EPOCHS, "method.calibration.max_false_query=null"]))
    assert raw["before"] == calibrated["before"] == small_run["before"]  # same local model
    allowed = load_config(SMALL).method.calibration.max_false_query
    assert calibrated["calibration_shift"] > 0 and raw["calibration_shift"] == 0.0
    assert calibrated["after"]["local_acc"] >= calibrated["before"]["local_acc"] - allowed - 0.01
    assert raw["after"]["query_acc"] > calibrated["after"]["query_acc"] + 0.1
    assert raw["after"]["local_acc"] < calibrated["after"]["local_acc"] - 0.05
    # uncalibrated, local accuracy leaves the claim's 2-point band (jittered local images alone do not keep it)
    assert raw["after"]["local_acc"] < raw["before"]["local_acc"] - 0.02
    assert set(small_run["query_classes"]).isdisjoint(small_run["local_classes"])


def test_probe_finds_experts_of_the_query_class(small_run):
    probe = small_run["probe"]
    assert probe["quality"]["precision"] >= 0.9
    assert probe["quality_query"]["recall"] == 1.0
    for c, experts in small_run["experts"].items():
        for k in experts:  # every chosen expert truly holds the query class
            assert int(c) in probe["true_profiles"][k] or int(c) in small_run["fallbacks"]


def test_same_seed_same_metrics(small_run):
    again = run_reference(load_config(SMALL))
    for stage in ("before", "after", "control"):
        assert again[stage] == small_run[stage]
    assert again["probe"]["scores"] == small_run["probe"]["scores"]


def test_different_seed_different_partition(small_run):
    other = run_reference(load_config([*SMALL, "seed=1", "local.epochs=1", "control=false"]))
    assert other["class_counts"] != small_run["class_counts"]


def test_local_model_cache_is_reused_and_follows_the_code(tmp_path, monkeypatch):
    from qkt_flower.data.federation import build_federation
    from qkt_flower.experiments import steps

    cfg = load_config([*SMALL, "dataset.train_per_class=100", "local.epochs=1", f"local.cache_dir={tmp_path}"])
    fed = build_federation(cfg.dataset, cfg.partition, cfg.query, cfg.seed, cfg.partition_cache)
    n = len(fed.scenario.partitions[1])
    assert steps.samples_to_train(cfg, fed, 1) == n
    trained = steps.train_client(cfg, fed, 1, "cpu")
    assert steps.local_cache_file(cfg, fed, 1).is_file() and steps.samples_to_train(cfg, fed, 1) == 0
    loaded = steps.train_client(cfg, fed, 1, "cpu")
    pairs = zip(trained.state_dict().values(), loaded.state_dict().values(), strict=True)
    assert all(torch.equal(a, b) for a, b in pairs)
    # another query class: a client whose images it leaves alone keeps its cached model, the querying client not
    other = load_config([*SMALL, "dataset.train_per_class=100", "local.epochs=1", f"local.cache_dir={tmp_path}",
                         "query.classes=[9]"])  # fmt: skip
    other_fed = build_federation(other.dataset, other.partition, other.query, other.seed, other.partition_cache)
    same = [k for k in range(1, fed.num_clients) if torch.equal(fed.scenario.partitions[k],
                                                                  other_fed.scenario.partitions[k])]  # fmt: skip
    assert 1 in same and steps.samples_to_train(other, other_fed, 1) == 0
    assert all(steps.client_model_key(other, other_fed, k) == steps.client_model_key(cfg, fed, k) for k in same)
    assert steps.client_model_key(other, other_fed, 0) != steps.client_model_key(cfg, fed, 0)
    # other training code, other key: a model cached by another version of the code is never loaded
    key, code = steps.client_model_key(cfg, fed, 1), steps.local_training_code()
    monkeypatch.setattr(steps, "local_training_code", lambda: (*code, steps.answer_probe))
    assert steps.client_model_key(cfg, fed, 1) != key
    assert not steps.local_cache_file(cfg, fed, 1).is_file() and steps.samples_to_train(cfg, fed, 1) == n


def test_cli_writes_results_and_resolved_config(tmp_path):
    cmd = [sys.executable, "-m", "qkt_flower.reference", *SMALL, "dataset.train_per_class=100",
           "local.epochs=1", f"hydra.run.dir={tmp_path}"]  # fmt: skip
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    results = json.loads((tmp_path / "results.json").read_text())
    assert {"before", "after", "control", "probe", "seconds", "bytes"} <= set(results)
    config = (tmp_path / "config.yaml").read_text()
    assert "${" not in config  # resolved
    assert "seed: 0" in config
    assert "query" in proc.stdout

    # a second run into the same folder is refused on one line before any work, and nothing is replaced
    first = (tmp_path / "results.json").read_bytes()
    again = subprocess.run([*cmd, "seed=1"], capture_output=True, text=True, timeout=300)
    assert again.returncode == 2 and again.stderr.startswith("error: overwrite=False"), again.stderr[-2000:]
    assert len(again.stderr.strip().splitlines()) == 1 and "Traceback" not in again.stderr
    assert (tmp_path / "results.json").read_bytes() == first
    assert "seed: 0" in (tmp_path / "config.yaml").read_text()
    refused = subprocess.run([*cmd, "resume=true", "overwrite=true"], capture_output=True, text=True, timeout=300)
    assert refused.returncode == 2 and refused.stderr.startswith("error: resume=True"), refused.stderr[-2000:]


@pytest.mark.slow
def test_full_data_paper_recipe_meets_the_claim():
    """The paper recipe on all of Fashion-MNIST: a large query gain at a small local cost.

    The paper recipe = the paper's two phases with epochs over the data, calibration 2 % on the client's own
    images, no jittered shots or local images, no consistent KD (the grid's "QKT, paper recipe" row). This cell
    (coat for a T-shirt/shirt client) is the look-alike case where the paper recipe was far ahead of the then
    default (72.0 vs 45.9 % query accuracy on the data-size grid; the default led on average over sizes,
    docs/RESULTS_LOG.md).
    """
    recipe = ["method=qkt_paper", "method.calibration.max_false_query=0.02"]
    r = run_reference(load_config(["progress=false", *recipe]))
    assert r["after"]["query_acc"] - r["before"]["query_acc"] > 0.5
    assert r["after"]["local_acc"] >= r["before"]["local_acc"] - 0.04
    assert r["after"]["query_acc"] > r["control"]["query_acc"] + 0.2
    assert r["probe"]["quality"]["precision"] >= 0.9


@pytest.mark.parametrize("device", ["cuda:99", "cuda:0" if not torch.cuda.is_available() else "cuda:99"])
def test_a_device_this_machine_lacks_is_one_line_before_the_data_loads(tmp_path, device):
    cmd = [
        sys.executable,
        "-m",
        "qkt_flower.reference",
        f"device={device}",
        "dataset.root=/nonexistent",
        f"hydra.run.dir={tmp_path}",
    ]  # fmt: skip  (the data folder does not exist: refused before it is read)
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and proc.stderr.startswith(f"error: device='{device}'"), proc.stderr[-2000:]
    assert len(proc.stderr.strip().splitlines()) == 1 and "CUDA GPUs visible" in proc.stderr
