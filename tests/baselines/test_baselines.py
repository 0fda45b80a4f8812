"""The baselines' pure-PyTorch pieces, checked by hand."""

import pytest
import torch
from torch import nn

from qkt_flower.baselines.averaging import average_state_dicts
from qkt_flower.baselines.ensemble import LogitEnsemble
from qkt_flower.baselines.proximal import proximal_step, train_round
from qkt_flower.data.datasets import ImageDataset
from qkt_flower.data.loaders import Batch
from qkt_flower.qkt.engine import OptimSpec


def test_weighted_average_by_sample_counts():
    a = {"w": torch.tensor([0.0, 4.0]), "steps": torch.tensor(7)}
    b = {"w": torch.tensor([4.0, 0.0]), "steps": torch.tensor(9)}
    out = average_state_dicts([a, b], [1, 3])
    assert torch.allclose(out["w"], torch.tensor([3.0, 1.0]))
    assert out["steps"].item() == 7 and out["steps"].dtype == torch.int64
    with pytest.raises(ValueError):
        average_state_dicts([a], [0])


def test_average_of_state_dicts_on_different_devices():
    """FedDF averages the teachers (moved to the GPU) with the node's own model (on the CPU): the result is
    on the first one's device. The meta device stands in for a GPU here (it fails the same way without the move).
    """
    out = average_state_dicts([{"w": torch.ones(2, device="meta")}, {"w": torch.ones(2)}], [1, 1])
    assert out["w"].device.type == "meta" and out["w"].shape == (2,)


def test_logit_ensemble_is_the_mean_of_its_members():
    torch.manual_seed(0)
    members = [nn.Linear(3, 4) for _ in range(3)]
    x = torch.randn(5, 3)
    expected = sum(m(x) for m in members) / 3
    assert torch.allclose(LogitEnsemble(members)(x), expected, atol=1e-6)
    with pytest.raises(ValueError):
        LogitEnsemble([])


def test_proximal_term_hand_computed():
    model = nn.Linear(2, 2)
    global_params = [p.detach().clone() for p in model.parameters()]
    batch = Batch(torch.randn(4, 2), torch.tensor([0, 1, 0, 1]), torch.arange(4))
    assert "proximal" not in proximal_step(global_params, 0.0)(model, batch)
    assert proximal_step(global_params, 0.5)(model, batch)["proximal"].item() == pytest.approx(0.0)
    with torch.no_grad():
        model.weight.add_(1.0)  # 4 entries moved by 1: ||d||^2 = 4
    assert proximal_step(global_params, 0.5)(model, batch)["proximal"].item() == pytest.approx(0.25 * 4)


def _data(n=256, seed=0):
    g = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, 3, (n,), generator=g)
    images = (torch.rand(n, 1, 4, 4, generator=g) * 60 + labels.view(-1, 1, 1, 1) * 60).to(torch.uint8)
    return ImageDataset(images, labels, classes=("a", "b", "c"), mean=(0.5,), std=(0.25,))


def test_fedprox_stays_closer_to_the_global_model_than_fedavg():
    data = _data()

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            torch.manual_seed(0)
            self.body = nn.Sequential(nn.Flatten(), nn.Linear(16, 3))

        def forward(self, x):
            return self.body(x)

    start = Net()
    drift = {}
    for mu in (0.0, 10.0):
        model = Net()
        model.load_state_dict(start.state_dict())
        train_round(model, data, 3, 32, OptimSpec("sgd", lr=0.1), seed=1, mu=mu)
        drift[mu] = sum(
            (p - q).pow(2).sum().item() for p, q in zip(model.parameters(), start.parameters(), strict=True)
        )
    assert drift[10.0] < 0.5 * drift[0.0]
