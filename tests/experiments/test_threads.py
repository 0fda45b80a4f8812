"""A client's training is the same bits however many threads the caller uses and however many clients train
side by side; torch's thread count comes back as it was."""

import threading
from pathlib import Path

import pytest
import torch

from qkt_flower.config import load_config
from qkt_flower.data.federation import build_federation
from qkt_flower.experiments import federated, steps
from qkt_flower.experiments.threads import in_parallel, one_thread

needs_fmnist = pytest.mark.skipif(not Path("/usr/share/datasets/fashion-mnist").is_dir(), reason="needs Fashion-MNIST")


@pytest.fixture(autouse=True)
def _threads_restored():
    """These tests set torch's thread count: the tests after them get the count they had."""
    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


def test_one_thread_is_the_calling_threads_own():
    torch.set_num_threads(2)
    assert torch.get_num_threads() == 2
    inside, leave, seen = threading.Event(), threading.Event(), {}

    def worker():
        with one_thread():
            seen["worker"] = torch.get_num_threads()
            inside.set()
            leave.wait(10)

    thread = threading.Thread(target=worker)
    thread.start()
    inside.wait(10)
    seen["main, worker inside"] = torch.get_num_threads()
    with one_thread():
        leave.set()
        thread.join(10)
        seen["main inside, worker gone"] = torch.get_num_threads()  # the worker's restore is its own
    assert seen == {"worker": 1, "main, worker inside": 2, "main inside, worker gone": 1}
    assert torch.get_num_threads() == 2
    with one_thread("cuda"):  # a GPU's work: the CPU threads are left as they are
        assert torch.get_num_threads() == 2


def test_clients_side_by_side_each_on_one_thread_and_the_caller_keeps_its_count():
    torch.set_num_threads(2)

    def count(_):
        with one_thread():
            return torch.get_num_threads()

    assert in_parallel(count, range(4), torch.device("cpu")) == [1, 1, 1, 1]
    assert torch.get_num_threads() == 2
    fresh = []  # a thread that never set a count takes the last one set: the caller's again
    thread = threading.Thread(target=lambda: fresh.append(torch.get_num_threads()))
    thread.start()
    thread.join(10)
    assert fresh == [2]


def test_in_parallel_keeps_order_and_raises_like_the_loop():
    assert in_parallel(lambda x: x * x, range(7), torch.device("cpu")) == [0, 1, 4, 9, 16, 25, 36]

    def fail(x):
        if x == 3:
            raise ValueError("three")
        return x

    with pytest.raises(ValueError, match="three"):
        in_parallel(fail, range(5), torch.device("cpu"))


@needs_fmnist
def test_a_clients_model_does_not_depend_on_the_callers_threads_or_its_neighbours():
    cfg = load_config(["dataset.train_per_class=100", "dataset.test_per_class=10", "partition.num_clients=3",
                       "local.epochs=1", "local.cache_dir=null", "progress=false"])  # fmt: skip
    fed = build_federation(cfg.dataset, cfg.partition, cfg.query, cfg.seed)
    cpu = torch.device("cpu")

    def states(models):
        return [m.state_dict() for m in models]

    torch.set_num_threads(2)
    alone = states(steps.train_client(cfg, fed, k, cpu) for k in range(3))
    side_by_side = states(in_parallel(lambda k: steps.train_client(cfg, fed, k, cpu), range(3), cpu))
    torch.set_num_threads(1)  # as in a Ray actor with one CPU
    on_one = states(steps.train_client(cfg, fed, k, cpu) for k in range(3))
    torch.set_num_threads(2)
    for other in (side_by_side, on_one):
        assert all(torch.equal(a[n], b[n]) for a, b in zip(alone, other, strict=True) for n in a)
    # a FedAvg round too: the global model after one round, clients side by side vs one thread
    rounds = federated.federated_baseline(cfg, fed, 0.0, 1, [1], cpu)[1].state_dict()
    torch.set_num_threads(1)
    again = federated.federated_baseline(cfg, fed, 0.0, 1, [1], cpu)[1].state_dict()
    torch.set_num_threads(2)
    assert all(torch.equal(rounds[n], again[n]) for n in rounds)
