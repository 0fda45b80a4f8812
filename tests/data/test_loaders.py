"""Mini-batches from in-memory tensors: the epoch length option."""

import pytest
import torch

from qkt_flower.data.loaders import Batches, balanced_weights


def _drawn(batches: Batches) -> torch.Tensor:
    return torch.cat([b.idx for b in batches])


def test_default_epoch_is_the_single_pass_it_was_before_the_option():
    x, y = torch.arange(10), torch.tensor([0] * 8 + [1] * 2)
    shuffled = Batches(x, y, 4, shuffle=True, generator=torch.Generator().manual_seed(3))
    assert len(shuffled) == 3
    assert torch.equal(_drawn(shuffled), torch.randperm(10, generator=torch.Generator().manual_seed(3)))
    balanced = Batches(x, y, 4, balanced=True, generator=torch.Generator().manual_seed(3))
    weights = balanced_weights(y)
    expected = torch.multinomial(weights, 10, replacement=True, generator=torch.Generator().manual_seed(3))
    assert torch.equal(_drawn(balanced), expected)


def test_fixed_epoch_longer_than_the_data_sees_every_sample_before_repeating():
    x, y = torch.arange(10), torch.tensor([0] * 8 + [1] * 2)
    batches = Batches(x, y, 4, shuffle=True, epoch_samples=25)
    drawn = _drawn(batches)
    assert len(batches) == 7 and drawn.numel() == 25
    assert sorted(drawn[:10].tolist()) == list(range(10)) and sorted(drawn[10:20].tolist()) == list(range(10))


def test_fixed_epoch_shorter_than_the_data_and_balanced():
    x, y = torch.arange(100), torch.tensor([0] * 90 + [1] * 10)
    short = Batches(x, y, 8, shuffle=True, epoch_samples=12)
    assert len(short) == 2 and _drawn(short).unique().numel() == 12
    balanced = Batches(x, y, 50, balanced=True, epoch_samples=2000, generator=torch.Generator().manual_seed(0))
    labels = torch.cat([b.y for b in balanced])
    assert labels.numel() == 2000 and abs(labels.float().mean().item() - 0.5) < 0.05


def test_bad_epoch_size_is_refused():
    with pytest.raises(ValueError, match="epoch_samples"):
        Batches(torch.arange(4), torch.zeros(4, dtype=torch.long), 2, epoch_samples=0)
