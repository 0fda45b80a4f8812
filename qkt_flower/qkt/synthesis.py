"""Data-free query-class inputs: images inverted from the expert teachers (DeepInversion-style).

The querying client holds only a few shots of a query class, so phase 1 sees the class almost only
through the teachers' opinion of *other* images — which is where their over-confidence on
look-alikes does harm. An expert that has seen the class can describe it without sharing data:
starting from noise, optimise inputs so that the expert calls them the query class while its
BatchNorm layers see the feature statistics (running mean and variance) of its own training data
(Yin et al., "Dreaming to Distill", CVPR 2020). The result is a set of images, quantised to
``uint8`` like any real image, that the student can be trained on; no client's data is used.

Pure torch: the Flower client calls :func:`invert_experts` on the experts it received.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from qkt_flower.data.datasets import ImageDataset


@dataclass(frozen=True)
class SynthesisSpec:
    """How many images per (expert, query class) and how hard to optimise them."""

    per_class: int = 0
    steps: int = 200
    lr: float = 0.1
    bn_weight: float = 1.0
    tv_weight: float = 1e-3
    l2_weight: float = 1e-4
    jitter: int = 2
    batch_size: int = 128


class _BNStatistics:
    """Forward hooks that add ``‖μ_batch − μ_running‖₂ + ‖σ²_batch − σ²_running‖₂`` per BatchNorm layer."""

    def __init__(self, model: nn.Module) -> None:
        self.losses: list[torch.Tensor] = []
        norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
        self.handles = [m.register_forward_hook(self._hook) for m in norms]

    def _hook(self, module: nn.Module, inputs: tuple[torch.Tensor, ...], _output: torch.Tensor) -> None:
        x = inputs[0]
        dims = [0] + list(range(2, x.dim()))
        mean = x.mean(dim=dims)
        var = x.var(dim=dims, unbiased=False)
        self.losses.append(
            torch.linalg.vector_norm(mean - module.running_mean) + torch.linalg.vector_norm(var - module.running_var)
        )

    def pop(self) -> torch.Tensor:
        """Sum of the losses collected since the last call."""
        total = torch.stack(self.losses).sum() if self.losses else torch.zeros(())
        self.losses = []
        return total

    def remove(self) -> None:
        for h in self.handles:
            h.remove()


def _total_variation(x: torch.Tensor) -> torch.Tensor:
    return (x[..., 1:, :] - x[..., :-1, :]).abs().mean() + (x[..., :, 1:] - x[..., :, :-1]).abs().mean()


def invert(
    teacher: nn.Module,
    label: int,
    n: int,
    input_shape: tuple[int, int, int],
    spec: SynthesisSpec,
    generator: torch.Generator,
    device: torch.device | str = "cpu",
) -> torch.Tensor:
    """``n`` inputs (normalised space) that ``teacher`` classifies as ``label``, its BN statistics matched.

    The teacher's weights are not changed (it stays in eval mode; only the inputs get gradients).
    Random shifts (``jitter`` pixels) and flips (off with ``jitter=0``) at each step keep the images from
    over-fitting one exact pixel pattern, as in DeepInversion.
    """
    teacher = teacher.to(device).eval()
    for p in teacher.parameters():
        p.requires_grad_(False)
    x = torch.randn((n, *input_shape), generator=generator).to(device).requires_grad_(True)
    target = torch.full((n,), label, dtype=torch.long, device=device)
    optimizer = torch.optim.Adam([x], lr=spec.lr)
    bn = _BNStatistics(teacher)
    try:
        for _ in range(spec.steps):
            dx, dy = (int(v) for v in torch.randint(-spec.jitter, spec.jitter + 1, (2,), generator=generator))
            view = torch.roll(x, shifts=(dx, dy), dims=(2, 3))
            if spec.jitter > 0 and bool(torch.rand((), generator=generator) < 0.5):
                view = torch.flip(view, dims=(3,))
            bn.pop()
            logits = teacher(view)
            loss = (
                F.cross_entropy(logits, target)
                + spec.bn_weight * bn.pop()
                + spec.tv_weight * _total_variation(view)
                + spec.l2_weight * view.pow(2).mean()
            )
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
    finally:
        bn.remove()
        for p in teacher.parameters():
            p.requires_grad_(True)
    return x.detach()


def to_images(x: torch.Tensor, like: ImageDataset) -> torch.Tensor:
    """Normalised inputs back to ``uint8`` pixels with ``like``'s mean/std (what a real image would be)."""
    mean = torch.tensor(like.mean, device=x.device).view(1, -1, 1, 1)
    std = torch.tensor(like.std, device=x.device).view(1, -1, 1, 1)
    return ((x * std + mean).clamp(0, 1) * 255).round().to(torch.uint8).cpu()


def invert_experts(
    experts: list[tuple[nn.Module, tuple[int, ...]]],
    like: ImageDataset,
    spec: SynthesisSpec,
    seed: int,
    device: torch.device | str = "cpu",
) -> ImageDataset:
    """``spec.per_class`` images per query class, shared out over that class's experts.

    ``experts`` are ``(model, query classes it teaches)``. Returns a dataset in ``like``'s format
    (classes, normalisation) whose labels are the query classes; empty when ``per_class`` is 0.
    """
    generator = torch.Generator().manual_seed(seed)
    by_class: dict[int, list[nn.Module]] = {}
    for model, classes in experts:
        for c in classes:
            by_class.setdefault(c, []).append(model)
    images, labels = [], []
    for c in sorted(by_class):
        models = by_class[c]
        counts = [spec.per_class // len(models) + (i < spec.per_class % len(models)) for i in range(len(models))]
        for model, count in zip(models, counts, strict=True):
            for start in range(0, count, spec.batch_size):
                n = min(spec.batch_size, count - start)
                x = invert(model, c, n, like.input_shape, spec, generator, device)
                images.append(to_images(x, like))
                labels.append(torch.full((n,), c, dtype=torch.long))
    if not images:
        return ImageDataset(
            torch.empty((0, *like.input_shape), dtype=torch.uint8), torch.empty(0, dtype=torch.long),
            like.classes, like.mean, like.std,
        )  # fmt: skip
    return ImageDataset(torch.cat(images), torch.cat(labels), like.classes, like.mean, like.std)
