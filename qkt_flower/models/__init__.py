"""Model registry. Every model exposes ``features(x) -> (N, D)`` and a linear ``head``.

That single contract is what lets the probe, the phases and the freezing of the feature
extractor work without per-architecture code.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from qkt_flower.errors import ConfigError, require
from qkt_flower.models.cnn import SmallCNN

__all__ = ["MODELS", "ModelSpec", "build_model", "SmallCNN"]


def _resnet(depth: int) -> Callable[..., nn.Module]:
    """The ResNet builder, imported on first use: torchvision's import costs every process ~1 s."""

    def build(**kwargs) -> nn.Module:
        from qkt_flower.models import resnet

        return getattr(resnet, f"resnet{depth}")(**kwargs)

    return build


MODELS: dict[str, Callable[..., nn.Module]] = {
    "cnn": SmallCNN,
    "resnet10": _resnet(10),
    "resnet18": _resnet(18),
}


@dataclass
class ModelSpec:
    """Architecture name from :data:`MODELS` (the ``model`` config group; default ``conf/model/cnn.yaml``)."""

    name: str = "cnn"

    def check(self) -> None:
        """Refuse an unknown architecture: :class:`~qkt_flower.errors.ConfigError` keyed ``name``."""
        require(self.name in MODELS, "name", self.name, f"one of {sorted(MODELS)}")


_GLOBAL_RNG = threading.Lock()
"""Held while a model is built from its seed: the global RNG is one per process, whichever thread builds."""


def build_model(name: str, input_shape: tuple[int, int, int], num_classes: int, seed: int) -> nn.Module:
    """Build model ``name`` with weights initialised from ``seed`` (independent of global RNG state).

    Seeding each client's model from its own seed makes a client's initial weights the same whether it
    is built in the reference runner, in a Ray actor, or on a SuperNode.
    """
    if name not in MODELS:
        raise ConfigError("model.name", name, f"one of {sorted(MODELS)}")
    with _GLOBAL_RNG, torch.random.fork_rng(devices=[]):  # one model at a time: clients may train side by side
        torch.manual_seed(seed)
        return MODELS[name](in_channels=input_shape[0], num_classes=num_classes, image_size=input_shape[1])
