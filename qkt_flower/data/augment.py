"""Label-preserving augmentations of a few images (the query shots), seeded.

Query learning balances classes, so 5 query shots are drawn as often as hundreds of local images:
the student sees the same 5 pictures hundreds of times and fits them, not the class. Shifted,
slightly rotated, rescaled and mirrored copies give it (and the teachers, whose logits are cached on
every row) more views of the class. Both QKT and the balanced-CE control use the same copies, so the
gap between them stays the teachers' contribution.
"""

from __future__ import annotations

import torch

from qkt_flower.data.images import ImageDataset


def shot_transform():
    """Mild geometric jitter that keeps the class of clothes, natural images and tissue patches.

    torchvision is imported here, on the querying node only: its import costs every process ~1 s.
    """
    from torchvision.transforms import v2

    return v2.Compose([v2.RandomHorizontalFlip(), v2.RandomAffine(degrees=10, translate=(0.1, 0.1), scale=(0.9, 1.1))])


def augmented_copies(data: ImageDataset, classes: tuple[int, ...], copies: int, seed: int) -> ImageDataset:
    """``copies`` augmented versions of every row whose label is in ``classes`` (same labels, same order)."""
    rows = torch.nonzero(torch.isin(data.labels, torch.tensor(classes, dtype=data.labels.dtype))).flatten()
    transform = shot_transform()
    images = []
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        for _ in range(copies):
            images += [transform(data.images[i]) for i in rows.tolist()]
    if not images:
        return ImageDataset(data.images[:0], data.labels[:0], data.classes, data.mean, data.std)
    return ImageDataset(torch.stack(images), data.labels[rows].repeat(copies), data.classes, data.mean, data.std)
