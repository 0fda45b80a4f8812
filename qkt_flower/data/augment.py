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
    if not len(rows) or copies <= 0:
        return ImageDataset(data.images[:0], data.labels[:0], data.classes, data.mean, data.std)
    if jitter == "crop_flip":
        generator = torch.Generator().manual_seed(seed)
        images = torch.cat([crop_flip(data.images[rows], generator) for _ in range(copies)])
    else:
        images = shot_jitter(data.images[rows].repeat(copies, 1, 1, 1), seed)
    return ImageDataset(images, data.labels[rows].repeat(copies), data.classes, data.mean, data.std)


def _uniform(fractions: torch.Tensor, low: float, high: float) -> torch.Tensor:
    """``torch.empty(1).uniform_(low, high)`` for each of ``fractions`` (``torch.rand`` draws), to the bit.

    PyTorch's CPU ``uniform_`` on float32 takes 24 random bits as a fraction ``x`` (what ``torch.rand`` returns,
    exactly), casts the bounds to float32, subtracts them in float32 and returns ``x * (high - low) + low``
    computed in double, rounded to float32 (``at::uniform_real_distribution``).
    """
    low32, high32 = torch.tensor(low, dtype=torch.float32), torch.tensor(high, dtype=torch.float32)
    return (fractions.double() * float(high32 - low32) + float(low32)).float()


def shot_jitter(images: torch.Tensor, seed: int) -> torch.Tensor:
    """:func:`shot_transform` applied to each image of a uint8 batch ``(N, C, H, W)`` in turn, in one pass.

    The same numbers as ``[shot_transform()(x) for x in images]`` under ``torch.manual_seed(seed)`` (the global RNG
    is forked, so the caller's stream is untouched). Per image the transform draws five numbers from the global
    stream, in order: the flip's ``torch.rand(1)``, then :class:`~torchvision.transforms.v2.RandomAffine`'s angle,
    x and y shift and scale (``uniform_`` each, one random word per draw); here all ``5 N`` are drawn at once and
    mapped as ``uniform_`` maps them (:func:`_uniform`). The affine matrices come from torchvision's own functions
    and every image is sampled in one batch — 15x faster than a Python loop over torchvision (23,600 copies in the
    default run's query phase took 4.6 s). ``tests/data/test_augment.py`` holds it to the per-image transform bit
    for bit.
    """
    from torchvision.transforms.v2._utils import _get_fill
    from torchvision.transforms.v2.functional._geometry import (
        _affine_parse_args,
        _apply_grid_transform,
        _check_interpolation,
        _get_inverse_affine_matrix,
    )

    flip, affine = shot_transform().transforms
    assert affine.shear is None and affine.translate is not None and affine.scale is not None, "five draws per image"
    mode = _check_interpolation(affine.interpolation)
    n, _, h, w = images.shape
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        draws = torch.rand(n, 5)
    flipped = draws[:, 0] < flip.p
    max_dx, max_dy = float(affine.translate[0] * w), float(affine.translate[1] * h)
    angles = _uniform(draws[:, 1], *affine.degrees).tolist()
    shifts_x = _uniform(draws[:, 2], -max_dx, max_dx).tolist()
    shifts_y = _uniform(draws[:, 3], -max_dy, max_dy).tolist()
    scales = _uniform(draws[:, 4], *affine.scale).tolist()
    matrices = []
    for angle, dx, dy, scale in zip(angles, shifts_x, shifts_y, scales, strict=True):
        degrees, translate, shear, _ = _affine_parse_args(angle, (int(round(dx)), int(round(dy))), scale, (0.0, 0.0),
                                                          mode, affine.center)  # fmt: skip
        matrices.append(_get_inverse_affine_matrix([0.0, 0.0], degrees, [float(t) for t in translate], scale, shear))
    out = images.clone()
    out[flipped] = out[flipped].flip(-1)
    # torchvision's _affine_grid, one theta per image
    theta = torch.tensor(matrices, dtype=torch.float32).reshape(n, 2, 3)
    rescaled = theta.transpose(1, 2).div_(torch.tensor([0.5 * w, 0.5 * h], dtype=torch.float32))
    base = torch.empty(1, h, w, 3)
    base[..., 0].copy_(torch.linspace((1.0 - w) * 0.5, (w - 1.0) * 0.5, steps=w))
    base[..., 1].copy_(torch.linspace((1.0 - h) * 0.5, (h - 1.0) * 0.5, steps=h).unsqueeze_(-1))
    base[..., 2].fill_(1)
    grid = base.view(1, h * w, 3).expand(n, -1, -1).bmm(rescaled).view(n, h, w, 2)
    return _apply_grid_transform(out, grid, mode.value, fill=_get_fill(affine._fill, torch.Tensor))
