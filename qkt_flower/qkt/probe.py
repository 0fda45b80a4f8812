"""Data-free noise probe: what a teacher predicts on pure noise reveals the classes it was trained on.

Trained classifiers are over-confident: fed noise, they put most of their probability mass on
classes they saw. The server sends only ``(seed, shape, count, kind)``; each teacher regenerates the
same noise with :func:`make_probe` and answers its mean softmax (C floats) via :func:`probe_scores`;
:func:`probe_answer` does both.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from qkt_flower.errors import require

NOISE_KINDS = ("gaussian", "uniform")


@dataclass
class ProbeSpec:
    """The noise probe, sent to teachers as ``(seed, shape, n, kind)``; temperature and standardisation shape replies.

    ``temperature``: T = 10 lifted mask recall from ~0.5 to ~0.9 (a trained model's answer on noise is
    winner-takes-all at T = 1). ``batch_size``: inference batch (local compute, not part of the wire spec).
    ``with_training``: the probe does not depend on the query, so teachers answer it in their training reply
    instead of a round trip of its own. ``reply_noise``: the scale of the Gaussian noise each teacher adds to its
    answer before it leaves (:func:`add_reply_noise`; 0 = exact answers) — less of its class profile revealed,
    at some cost in mask quality (measured in ``results/probe_privacy.md``).
    """

    n: int = 256
    kind: str = "gaussian"
    temperature: float = 10.0
    standardize: bool = False
    seed: int = 0
    batch_size: int = 64
    with_training: bool = True
    reply_noise: float = 0.0

    def check(self) -> None:
        """Refuse an empty probe, an unknown noise kind, a non-positive temperature and negative noise."""
        require(self.reply_noise >= 0, "reply_noise", self.reply_noise, "a float >= 0 (0 = exact answers)")
        require(self.n >= 1, "n", self.n, "an integer >= 1")
        require(self.kind in NOISE_KINDS, "kind", self.kind, f"one of {list(NOISE_KINDS)}")
        require(self.temperature > 0, "temperature", self.temperature, "a float > 0")
        require(self.batch_size >= 1, "batch_size", self.batch_size, "an integer >= 1")


def make_probe(shape: tuple[int, ...], n: int, seed: int, kind: str = "gaussian") -> torch.Tensor:
    """``n`` noise inputs of ``shape`` (C, H, W) in the normalised input space, reproducible from ``seed``.

    ``gaussian``: standard normal. ``uniform``: U(-sqrt(3), sqrt(3)), also zero mean and unit variance.
    """
    gen = torch.Generator().manual_seed(seed)
    if kind == "gaussian":
        return torch.randn((n, *shape), generator=gen)
    if kind == "uniform":
        return (torch.rand((n, *shape), generator=gen) * 2.0 - 1.0) * math.sqrt(3.0)
    raise ValueError(f"probe noise kind {kind!r} is not one of {NOISE_KINDS}")


def standardize_logits(logits: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """Z-score logits per sample (Sun et al., CVPR 2024): removes each model's logit scale."""
    mean = logits.mean(dim=-1, keepdim=True)
    std = logits.std(dim=-1, keepdim=True)
    return (logits - mean) / (std + eps)


@torch.inference_mode()
def probe_scores(
    model: nn.Module,
    probe: torch.Tensor,
    temperature: float = 10.0,
    standardize: bool = False,
    batch_size: int = 64,
    device: torch.device | str = "cpu",
) -> torch.Tensor:
    """Mean softmax ``s_k ∈ R^C`` of ``model`` over the probe, at probe temperature ``temperature``.

    A high temperature softens the winner-takes-all answer on noise so that every trained class,
    not just the dominant one, gets a visible share (recall 0.48 at T=1 vs 0.96 at T=10, measured).
    """
    model.eval()
    total = None
    for start in range(0, probe.shape[0], batch_size):
        logits = model(probe[start : start + batch_size].to(device)).float()
        if standardize:
            logits = standardize_logits(logits)
        probs = torch.softmax(logits / temperature, dim=-1).sum(dim=0)
        total = probs if total is None else total + probs
    return (total / probe.shape[0]).cpu()


def probe_answer(
    model: nn.Module,
    shape: tuple[int, ...],
    n: int,
    seed: int,
    kind: str = "gaussian",
    temperature: float = 10.0,
    standardize: bool = False,
    batch_size: int = 64,
    device: torch.device | str = "cpu",
) -> torch.Tensor:
    """A teacher's answer to the probe ``(shape, n, seed, kind)``: it regenerates the noise and scores it.

    The one path for every teacher (a Flower node from the wire spec, the reference runner from the
    config), so both answer bit for bit the same; ``model`` is moved to ``device``.
    """
    noise = make_probe(tuple(shape), n, seed, kind)
    return probe_scores(model.to(device), noise, temperature, standardize, batch_size, device)


def add_reply_noise(scores: torch.Tensor, scale: float, seed: tuple[int, int] | None = None) -> torch.Tensor:
    """``scores`` plus Gaussian noise of std ``scale``, clipped at 0 and renormalised to sum to 1.

    The teacher adds it before its answer leaves, so the server sees a blurred class profile. ``seed``
    ``(run seed, client)`` makes the noise reproducible (simulations, the reference runner); ``None`` draws it from
    fresh randomness, which a server cannot subtract (a deployed node's default).
    """
    gen = torch.Generator()
    if seed is None:
        gen.seed()
    else:
        gen.manual_seed(seed[0] * 100_003 + seed[1] + 7_919)
    noisy = (scores.double() + scale * torch.randn(scores.shape, generator=gen, dtype=torch.float64)).clamp_min(0)
    total = noisy.sum()
    noisy = noisy / total if total > 0 else torch.full_like(noisy, 1.0 / noisy.numel())
    return noisy.to(scores.dtype)


def check_probe_reply(scores: object, num_classes: int, atol: float = 1e-3) -> str | None:
    """Why a teacher's probe answer is unusable, or ``None`` if it is valid.

    A reply must be a finite, non-negative vector of length C summing to 1 (a teacher trained with
    too high a learning rate answered NaN in the prototype).
    """
    if not isinstance(scores, torch.Tensor):
        try:
            scores = torch.as_tensor(scores, dtype=torch.float64)
        except (TypeError, ValueError, RuntimeError):
            return "not a numeric vector"
    if scores.dim() != 1 or scores.numel() != num_classes:
        return f"expected {num_classes} scores, got shape {tuple(scores.shape)}"
    if not torch.isfinite(scores).all():
        return "non-finite scores (NaN/inf)"
    if (scores < 0).any():
        return "negative scores"
    total = float(scores.sum())
    if abs(total - 1.0) > atol:
        return f"scores sum to {total:.4f}, not 1"
    return None


def check_weights(state: dict[str, torch.Tensor], expected: dict[str, torch.Size]) -> str | None:
    """Why a teacher's weights are unusable as an expert, or ``None`` if they are valid.

    They must hold exactly the tensors of the agreed architecture (same names and shapes: a node with a
    different label space or model answers other shapes) and only finite values (a diverged teacher).
    """
    if set(state) != set(expected):
        missing, extra = sorted(set(expected) - set(state)), sorted(set(state) - set(expected))
        return f"not the agreed model: missing {missing[:3]}, unexpected {extra[:3]}"
    for name, shape in expected.items():
        if tuple(state[name].shape) != tuple(shape):
            return f"{name} has shape {tuple(state[name].shape)}, expected {tuple(shape)}"
        if state[name].is_floating_point() and not torch.isfinite(state[name]).all():
            return f"non-finite values (NaN/inf) in {name}"
    return None
