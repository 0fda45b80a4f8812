"""Which datasets exist and what a valid dataset spec is.

The registry :data:`DATASETS` maps config names to the loaders of :mod:`qkt_flower.data.sources`; every
loader returns a pair of :class:`~qkt_flower.data.images.ImageDataset` (train, test). :class:`DatasetSpec`
is the ``dataset`` config group (its defaults are ``conf/dataset/fashion_mnist.yaml``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from qkt_flower.data import sources
from qkt_flower.data.images import ImageDataset, channel_stats
from qkt_flower.errors import ConfigError, require

__all__ = ["DatasetSpec", "DATASETS", "load_dataset", "ImageDataset", "channel_stats"]


Loader = Callable[..., tuple[ImageDataset, ImageDataset]]


def _registry() -> dict[str, Loader]:
    """Looked up at call time, so a loader patched in :mod:`~qkt_flower.data.sources` is the one used."""
    return {
        "fashion-mnist": sources.load_fashion_mnist,
        "cifar10": sources.load_cifar10,
        "cifar100": sources.load_cifar100,
        "pathmnist": sources.load_pathmnist,
        "imagefolder": sources.load_image_folder,
    }


DATASETS: tuple[str, ...] = ("fashion-mnist", "cifar10", "cifar100", "pathmnist", "imagefolder")


def load_dataset(name: str, root: str | Path, download: bool = False, **options) -> tuple[ImageDataset, ImageDataset]:
    """Load ``(train, test)`` of dataset ``name`` from ``root``.

    Raises
    ------
    ConfigError
        ``name`` is not a known dataset.
    DataNotFoundError
        the files are not under ``root``; the message says how to get them.
    """
    registry = _registry()
    if name not in registry:
        raise ConfigError("dataset.name", name, f"one of {sorted(registry)}")
    return registry[name](Path(root).expanduser(), download=download, **options)


@dataclass
class DatasetSpec:
    """Which data, where, and optional per-class caps for quick runs."""

    name: str = "fashion-mnist"
    root: str = "/usr/share/datasets/fashion-mnist"
    download: bool = False
    train_per_class: int | None = None  # cap training samples per class (quick runs, tests); None = all
    test_per_class: int | None = None  # cap test samples per class; None = all
    image_size: int | None = None  # only for imagefolder

    def check(self) -> None:
        """Refuse a value not allowed: :class:`~qkt_flower.errors.ConfigError` keyed by field (``name``, ...)."""
        require(self.name in DATASETS, "name", self.name, f"one of {list(DATASETS)}")
        for key in ("train_per_class", "test_per_class"):
            value = getattr(self, key)
            require(value is None or value >= 1, key, value, "null or an integer >= 1")
