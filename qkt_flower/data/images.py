"""The in-memory image split every loader returns and every consumer reads.

:class:`ImageDataset` holds ``uint8`` images ``(N, C, H, W)``, ``int64`` labels and class names. Images stay
``uint8`` in memory (a quarter of float32) and are normalised per batch by :mod:`qkt_flower.data.loaders`;
no per-sample PIL work happens after loading.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

__all__ = ["ImageDataset", "channel_stats"]


@dataclass(frozen=True)
class ImageDataset:
    """Images and labels of one split, in memory.

    Attributes
    ----------
    images
        ``uint8`` tensor ``(N, C, H, W)``.
    labels
        ``int64`` tensor ``(N,)`` with values in ``[0, len(classes))``.
    classes
        Human-readable class names, index = label.
    mean, std
        Per-channel statistics (in ``[0, 1]`` pixel units) used to normalise inputs; the noise
        probe lives in this normalised space.
    """

    images: torch.Tensor
    labels: torch.Tensor
    classes: tuple[str, ...]
    mean: tuple[float, ...]
    std: tuple[float, ...]

    def __post_init__(self) -> None:
        if self.images.dtype != torch.uint8 or self.images.dim() != 4:
            raise ValueError(f"images must be uint8 (N, C, H, W), got {self.images.dtype} {tuple(self.images.shape)}")
        if self.labels.shape != (self.images.shape[0],):
            raise ValueError(f"{self.images.shape[0]} images but labels of shape {tuple(self.labels.shape)}")
        if len(self.mean) != self.images.shape[1] or len(self.std) != self.images.shape[1]:
            raise ValueError("mean/std need one value per channel")

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    @property
    def num_classes(self) -> int:
        """Number of classes C (the label space, not just the classes present)."""
        return len(self.classes)

    @property
    def input_shape(self) -> tuple[int, int, int]:
        """``(C, H, W)`` of one image."""
        return tuple(self.images.shape[1:])  # type: ignore[return-value]

    def subset(self, indices: torch.Tensor | Sequence[int]) -> ImageDataset:
        """Rows ``indices`` of this split, sharing class names and normalisation."""
        idx = torch.as_tensor(indices, dtype=torch.long)
        return ImageDataset(self.images[idx], self.labels[idx], self.classes, self.mean, self.std)

    def class_counts(self) -> torch.Tensor:
        """Samples per class, length C."""
        return torch.bincount(self.labels, minlength=self.num_classes)


def channel_stats(images: torch.Tensor) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean and std of ``uint8`` images in ``[0, 1]`` units (for datasets without published ones)."""
    x = images.double().div_(255.0)
    mean = x.mean(dim=(0, 2, 3))
    std = x.std(dim=(0, 2, 3)).clamp_min(1e-3)
    return tuple(float(v) for v in mean), tuple(float(v) for v in std)
