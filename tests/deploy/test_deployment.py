"""QKT on Flower's deployment runtime: a real SuperLink and SuperNodes on 127.0.0.1, with TLS and node auth.

One deployment (4 SuperNodes) serves the module; every process it starts is stopped by the fixture,
also when a test fails. Each ``flwr run`` starts one ``flwr-clientapp`` process per message on the
nodes (re-importing torch), so a run takes ~1.5-3 min on 2 cores: these tests are ``slow``.
"""

import json
import time
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

from qkt_flower.config import compose_config, to_config
from qkt_flower.deploy.local import LocalDeployment
from qkt_flower.experiments.steps import choose_experts
from qkt_flower.fl.processes import alive, descendants
from qkt_flower.fl.simulation import simulate
from qkt_flower.results import load_results

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not Path("/usr/share/datasets/fashion-mnist").is_dir(), reason="needs Fashion-MNIST"),
]

NODES = 4
OVERRIDES = [
    "dataset.train_per_class=200", "dataset.test_per_class=100", "local.epochs=1", "progress=false",
    f"partition.num_clients={NODES}", "control=false",
]  # fmt: skip


@pytest.fixture(scope="module")
def deployment(tmp_path_factory):
    work = tmp_path_factory.mktemp("deployment")
    with LocalDeployment(work, num_nodes=NODES, secure=True, auth=True) as d:
        yield d
    pids = [d.superlink.pid, *(n.pid for n in d.nodes.values())]
    assert not any(alive(p) for p in pids), "a Flower process outlived the deployment"


def _overrides(tmp_path: Path, *extra: str) -> list[str]:
    return [*OVERRIDES, f"checkpoint_dir={tmp_path / 'checkpoints'}", *extra]


def test_tls_and_node_auth_run_matches_simulation(deployment, tmp_path):
    """The same config over SuperLink + SuperNodes (HTTPS, registered node keys) and in simulation."""
    assert deployment.tls is not None and "--enable-supernode-auth" in deployment.superlink_command()
    status = deployment.run(_overrides(tmp_path), tmp_path / "deployed", timeout=900)
    assert status == "finished:completed"
    deployed = load_results(tmp_path / "deployed")

    dcfg = compose_config(_overrides(tmp_path / "sim"))
    simulate(to_config(dcfg), OmegaConf.to_yaml(dcfg, resolve=True), tmp_path / "simulated")
    simulated = load_results(tmp_path / "simulated")

    assert deployed["dropped"] == {} and deployed["metrics"] is not None
    assert deployed["probe"]["masks"] == simulated["probe"]["masks"]
    assert deployed["experts"] == simulated["experts"]
    for key in ("before.query_acc", "before.local_acc", "after.query_acc", "after.local_acc"):
        assert deployed["metrics"][key] == pytest.approx(simulated["metrics"][key], abs=1e-6), key


def test_unregistered_node_is_refused(deployment):
    """A SuperNode whose key was never registered cannot join (Flower exit code 305) and is never seen online."""
    before = deployment.online_nodes()
    node = deployment.start_node(NODES + 1, register=False)
    assert node.popen.wait(timeout=120) != 0
    assert "305" in node.log.read_text() or "could not establish a connection" in node.log.read_text()
    assert deployment.online_nodes() == before


def test_resume_skips_finished_steps(deployment, tmp_path):
    """A second run of the same config with resume=true sends no message: the checkpoint holds every step."""
    first = tmp_path / "first"
    deployment.run(_overrides(tmp_path), first, timeout=900)
    again = tmp_path / "again"
    start = time.perf_counter()
    deployment.run(_overrides(tmp_path, "resume=true"), again, timeout=300)
    resumed = load_results(again)
    assert resumed["resumed"] == ["all"]
    assert resumed["metrics"] == load_results(first)["metrics"]
    assert time.perf_counter() - start < 60


def test_killed_supernode_mid_run(deployment, tmp_path):
    """Kill a teacher's SuperNode (its process tree, by pid) after training: QKT finishes with the others."""
    victim = NODES - 1  # the querying client is 0
    # a probe message of its own, so that the dead teacher is asked again whether or not it is an expert
    extra = ("simulation.reply_timeout=120", "simulation.query_timeout=120", "strategy.probe.with_training=false")
    run = deployment.submit(_overrides(tmp_path, *extra), tmp_path / "out")
    steps_file = None
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline and run.alive():
        steps_file = next((tmp_path / "checkpoints").glob("*/steps.json"), None)
        if steps_file is not None and "train" in json.loads(steps_file.read_text())["steps"]:
            break
        time.sleep(0.5)
    assert steps_file is not None, "the run never finished local training"
    pid = deployment.nodes[victim].pid
    tree = [pid, *descendants(pid)]
    deployment.kill_node(victim)
    assert not any(alive(p) for p in tree)
    deployment.wait(run, timeout=900)
    res = load_results(tmp_path / "out")
    assert str(victim) in res["dropped"], res["dropped"]
    assert "probe" in res["dropped"][str(victim)] or "weights" in res["dropped"][str(victim)]
    assert str(victim) not in res["probe"]["scores"]
    assert res["metrics"] is not None and res["metrics"]["after.query_acc"] > res["metrics"]["before.query_acc"]


def test_an_expert_killed_while_its_weights_are_asked_for(deployment, tmp_path):
    """Kill an expert's SuperNode the moment the probe round ends (its scores are checkpointed, the weights
    messages go out next, each starting a ClientApp process on its node): the run drops it at the weights step,
    re-selects without it and finishes."""
    for k, node in list(deployment.nodes.items()):  # a node an earlier test killed comes back, with its key
        if not node.alive():
            deployment.start_node(k)
    deployment.wait_online(NODES)
    overrides = _overrides(tmp_path, "simulation.reply_timeout=120", "simulation.query_timeout=120")
    run = deployment.submit(overrides, tmp_path / "out")
    probe, deadline = None, time.monotonic() + 600
    while probe is None and time.monotonic() < deadline and run.alive():
        steps_file = next((tmp_path / "checkpoints").glob("*/steps.json"), None)
        try:
            probe = json.loads(steps_file.read_text())["steps"].get("probe") if steps_file else None
        except ValueError:  # replaced while read
            probe = None
        time.sleep(0.05)
    assert probe is not None, "the run never finished its probe round"
    saved = json.loads(steps_file.read_text())["steps"]
    scores = {int(key.split(".")[0]): torch.tensor(v) for key, v in probe.items()}
    query = tuple(saved["train"]["0"]["query-classes"])
    _, selection = choose_experts(to_config(compose_config(overrides)), scores, query)
    victim = selection.relevant[0]
    deployment.kill_node(victim)
    deployment.wait(run, timeout=900)
    res = load_results(tmp_path / "out")
    assert res["dropped"].get(str(victim), "").startswith("weights"), res["dropped"]
    assert all(victim not in experts for experts in res["experts"].values())
    assert res["metrics"] is not None and res["metrics"]["after.query_acc"] > res["metrics"]["before.query_acc"]
