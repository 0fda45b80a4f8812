"""The fast 2x2 max pooling gives ``nn.MaxPool2d(2)``'s outputs and gradients, bit for bit, ties and NaNs included."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from qkt_flower.models import build_model
from qkt_flower.models.pooling import MaxPool2x2

SHAPES = [(8, 4, 28, 28), (8, 4, 7, 7), (3, 5, 14, 15), (64, 32, 28, 28)]


def _tied(shape, gen: torch.Generator) -> torch.Tensor:
    x = torch.randint(0, 3, shape, generator=gen).float()  # three values: most windows hold ties
    x[0, 0, 0, 0] = float("nan")
    x[-1, -1, 1, 1] = float("-inf")
    x[-1, 0, -1, -1] = float("nan")  # in the dropped last row / column of odd shapes
    return x


@pytest.mark.parametrize("shape", SHAPES)
def test_outputs_and_gradients_equal_max_pool2d_even_on_ties(shape):
    gen = torch.Generator().manual_seed(0)
    x = _tied(shape, gen)
    ours, theirs = x.clone().requires_grad_(), x.clone().requires_grad_()
    out, ref = MaxPool2x2()(ours), F.max_pool2d(theirs, 2)
    grad = torch.randn(ref.shape, generator=gen)
    out.backward(grad)
    ref.backward(grad)
    assert out.is_contiguous() and out.shape == ref.shape
    assert torch.equal(out.nan_to_num(7.0), ref.nan_to_num(7.0)) and torch.equal(out.isnan(), ref.isnan())
    assert torch.equal(ours.grad, theirs.grad)


@pytest.mark.parametrize("shape", SHAPES)
def test_without_gradients_the_values_equal_max_pool2d(shape):
    x = _tied(shape, torch.Generator().manual_seed(2))
    x[1, 1, 2:4, 2:4] = torch.tensor([[1.0, float("inf")], [float("nan"), float("inf")]])
    ref = F.max_pool2d(x, 2)
    with torch.inference_mode():
        inferred = MaxPool2x2()(x)
    with torch.no_grad():
        no_grad = MaxPool2x2()(x.clone().requires_grad_())
    for out in (inferred, no_grad, MaxPool2x2()(x)):  # x itself wants no gradient
        assert out.is_contiguous() and out.shape == ref.shape and not out.requires_grad
        assert torch.equal(out.nan_to_num(7.0), ref.nan_to_num(7.0)) and torch.equal(out.isnan(), ref.isnan())


def test_a_model_trains_to_the_same_bits_as_the_textbook_block():
    """Pool-then-ReLU through the fast pooling = Conv-BN-ReLU-``nn.MaxPool2d``: outputs, gradients, trained weights."""

    def trained(ours: bool) -> tuple[dict, torch.Tensor]:
        torch.manual_seed(0)
        model = build_model("cnn", (1, 28, 28), 10, seed=0)
        if not ours:  # the textbook order with PyTorch's pooling; no parameter moves
            for relu_at in (2, 6):
                model.body[relu_at], model.body[relu_at + 1] = torch.nn.ReLU(inplace=True), torch.nn.MaxPool2d(2)
        opt = torch.optim.Adam(model.parameters(), 1e-3)
        gen = torch.Generator().manual_seed(1)
        for _ in range(20):  # half the pixels 0, like an image's background: windows full of ties
            x, y = torch.randn(32, 1, 28, 28, generator=gen).clamp(min=0), torch.randint(0, 10, (32,), generator=gen)
            opt.zero_grad()
            F.cross_entropy(model(x), y).backward()
            opt.step()
        with torch.inference_mode():
            return model.state_dict(), model.eval()(x)

    (ours, logits), (theirs, expected) = trained(True), trained(False)
    assert all(torch.equal(ours[k], theirs[k]) for k in theirs)
    assert torch.equal(logits, expected)
