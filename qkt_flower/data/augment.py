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


JITTERS = ("affine", "crop_flip")
"""``affine``: flip + small rotation / shift / scale (grey clothing); ``crop_flip``: pad-4 crop + flip (CIFAR)."""


def crop_flip(images: torch.Tensor, generator: torch.Generator, pad: int = 4) -> torch.Tensor:
    """The CIFAR augmentation on a uint8 batch ``(N, C, H, W)``: zero-pad, random crop, random horizontal flip.

    Per image, drawn from ``generator`` (the same generator state gives the same batch); dtype and shape kept.
    """
    n, _, h, w = images.shape
    padded = torch.nn.functional.pad(images, (pad, pad, pad, pad))
    dy = torch.randint(0, 2 * pad + 1, (n,), generator=generator).tolist()
    dx = torch.randint(0, 2 * pad + 1, (n,), generator=generator).tolist()
    flip = (torch.rand(n, generator=generator) < 0.5).tolist()
    out = torch.stack([padded[i, :, dy[i] : dy[i] + h, dx[i] : dx[i] + w] for i in range(n)])
    if any(flip):
        out[flip] = out[flip].flip(-1)
    return out


def batch_augmentation(kind: str, seed: int):
    """A per-batch augmentation of uint8 images for training loops (``None`` for ``kind = "none"``)."""
    if kind == "none":
        return None
    if kind != "crop_flip":
        raise ValueError(f"augmentation {kind!r} is not one of ['none', 'crop_flip']")
    generator = torch.Generator().manual_seed(seed)
    return lambda x: crop_flip(x, generator)


def augmented_copies(
    data: ImageDataset, classes: tuple[int, ...], copies: int, seed: int, jitter: str = "affine"
) -> ImageDataset:
    """``copies`` jittered versions of every row whose label is in ``classes`` (same labels, same order)."""
    rows = torch.nonzero(torch.isin(data.labels, torch.tensor(classes, dtype=data.labels.dtype))).flatten()
    if jitter == "crop_flip":
        generator = torch.Generator().manual_seed(seed)
        images = [crop_flip(data.images[rows], generator) for _ in range(copies)] if len(rows) else []
        if not images:
            return ImageDataset(data.images[:0], data.labels[:0], data.classes, data.mean, data.std)
        return ImageDataset(torch.cat(images), data.labels[rows].repeat(copies), data.classes, data.mean, data.std)
    transform = shot_transform()
    images = []
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        for _ in range(copies):
            images += [transform(data.images[i]) for i in rows.tolist()]
    if not images:
        return ImageDataset(data.images[:0], data.labels[:0], data.classes, data.mean, data.std)
    return ImageDataset(torch.stack(images), data.labels[rows].repeat(copies), data.classes, data.mean, data.std)
