"""Query-bias calibration: keep the local classes by bounding how often they are called a query class.

Query learning sees a query class through a handful of shots, over-sampled to balance the classes,
plus teachers that are over-confident on look-alikes. The head ends up with a query-class bias that
is too large: on the prototype and on our grid most of the local-accuracy loss is local images
predicted as the query class (a shirt called a coat), not confusions among local classes.

The querying client can measure that error itself, on its own local-class images: the share of
them the new model assigns to a query class. :func:`calibrate_query_bias` lowers the query classes'
head bias by the smallest amount that brings this share down to ``max_false_query`` — one scalar,
set from data the client has, with no test data and no server involvement.

A local model trained to convergence has memorised its own training images: it calls almost none of
them a query class, and neither does the fine-tuned model, so calibration on them corrects nothing
while the test images see several times more false queries (grid with ``local.epochs=10``:
1.4 % on the training images, 4.5 % on the test images). ``augment`` measures the share on jittered
copies of the local images instead (the shots' own jitter, :func:`~qkt_flower.data.augment.augmented_copies`):
images the model has not memorised. They over-estimate the test rate (14 % on the same grid: the
jitter is what the augmented shots taught as query-like), so the allowed share is a budget on a
conservative proxy, not the test error itself.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from qkt_flower.data.augment import augmented_copies
from qkt_flower.data.datasets import ImageDataset
from qkt_flower.data.loaders import INFERENCE_BATCH, image_batches
from qkt_flower.errors import require
from qkt_flower.qkt.engine import predict_logits


@dataclass
class CalibrationSpec:
    """``max_false_query``: allowed share of local images predicted as a query class (``None`` = off).

    ``augment``: measure it on that many jittered copies of each local image instead of the images.
    """

    max_false_query: float | None = 0.05
    augment: int = 4

    def check(self) -> None:
        """Refuse a share outside [0, 1) and a negative copy count."""
        limit = self.max_false_query
        require(limit is None or 0 <= limit < 1, "max_false_query", limit, "null or a float in [0, 1)")
        require(self.augment >= 0, "augment", self.augment, "an integer >= 0")


def query_margins(logits: torch.Tensor, query_classes: tuple[int, ...]) -> torch.Tensor:
    """Per row: best query-class logit minus best non-query logit (> 0 means "predicted as a query class")."""
    q = torch.zeros(logits.shape[-1], dtype=torch.bool, device=logits.device)
    q[list(query_classes)] = True
    return logits[:, q].max(dim=-1).values - logits[:, ~q].max(dim=-1).values


def non_query_argmax(logits: torch.Tensor, query_classes: tuple[int, ...]) -> torch.Tensor:
    """Per row: the best class that is not a query class (what the prediction becomes once the query loses)."""
    masked = logits.clone()
    masked[:, list(query_classes)] = float("-inf")
    return masked.argmax(dim=-1)


def query_bias_shift(margins: torch.Tensor, max_false_query: float) -> float:
    """Smallest shift ``b ≥ 0`` with ``mean(margins - b > 0) ≤ max_false_query``."""
    if margins.numel() == 0:
        return 0.0
    allowed = int(max_false_query * margins.numel())
    if allowed >= margins.numel():
        return 0.0
    ranked = torch.sort(margins, descending=True).values
    edge = float(ranked[allowed])  # this row must end strictly below 0; a small slack absorbs float rounding
    return max(edge + 1e-5 * (1.0 + abs(edge)), 0.0) if edge >= 0 else 0.0


def query_bias_shift_among(margins: torch.Tensor, counted: torch.Tensor, max_share: float) -> float:
    """:func:`query_bias_shift` counting only the ``counted`` rows as false queries (the share is of all rows)."""
    return query_bias_shift(margins.masked_fill(~counted, -1.0), max_share)


def accuracy_keeping_shift(
    margins: torch.Tensor, right_otherwise: torch.Tensor, original_right: torch.Tensor, max_local_drop: float
) -> float | None:
    """Smallest shift ``b ≥ 0`` whose accuracy stays within ``max_local_drop`` of the original model's.

    Not a default: ``qkt_flower.experiments.frontier`` uses it for the rules that spend the accuracy the
    new model gained, and for the test oracle (the smallest shift that keeps the test band).

    ``margins``: :func:`query_margins` of the new model on local images; ``right_otherwise``: its best
    non-query class is the true label; ``original_right``: the original model gets the image right.
    Every label is a local class, so after a shift ``b`` an image is right iff ``right_otherwise`` and
    its margin drops to ``≤ b``: accuracy only grows with ``b``, and the smallest shift is the
    false-query bound of :func:`query_bias_shift` over the otherwise-right images, with a budget of the
    accuracy the new model may lose: its accuracy without query predictions − (original's − drop).
    ``None`` when even removing every query prediction does not reach that accuracy.
    """
    if margins.numel() == 0:
        return 0.0
    budget = float(right_otherwise.float().mean() - original_right.float().mean()) + max_local_drop
    if budget < 0:
        return None
    return query_bias_shift_among(margins, right_otherwise, budget)


def calibration_images(
    images: ImageDataset, local_classes: tuple[int, ...], spec: CalibrationSpec, seed: int, jitter: str = "affine"
) -> ImageDataset:
    """The images the false-query share is measured on: ``images`` or ``spec.augment`` jittered copies."""
    if spec.augment <= 0:
        return images
    return augmented_copies(images, tuple(local_classes), spec.augment, seed, jitter)


@torch.no_grad()
def calibrate_query_bias(
    model: nn.Module,
    local_images: ImageDataset,
    query_classes: tuple[int, ...],
    local_classes: tuple[int, ...],
    max_false_query: float,
    device: torch.device | str = "cpu",
) -> float:
    """Lower ``model.head``'s query-class biases in place; returns the shift applied (0 when none needed)."""
    logits, labels = predict_logits(model, image_batches(local_images, INFERENCE_BATCH, device=device))
    local = torch.isin(labels, torch.tensor(local_classes, dtype=labels.dtype))
    shift = query_bias_shift(query_margins(logits[local], query_classes), max_false_query)
    if shift > 0:
        bias = model.head.bias
        bias[list(query_classes)] -= shift
    return shift


def calibrate(
    model: nn.Module,
    own: ImageDataset,
    query_classes: tuple[int, ...],
    local_classes: tuple[int, ...],
    spec: CalibrationSpec,
    seed: int,
    device: torch.device | str = "cpu",
    jitter: str = "affine",
) -> float:
    """Apply :func:`calibrate_query_bias` as ``spec`` says, on the client's own images ``own``; returns the shift.

    ``own`` is the client's data before the transfer set's jittered copies (calibrating on jittered copies of
    those would measure copies of copies); ``spec.augment`` jitters it here instead.
    """
    if spec.max_false_query is None:
        return 0.0
    images = calibration_images(own, local_classes, spec, seed, jitter)
    return calibrate_query_bias(model, images, query_classes, local_classes, spec.max_false_query, device)
