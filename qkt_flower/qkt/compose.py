"""Where the student starts: a copy of the client's model, its experts' extractors beside it, or a weight merge.

- ``copy`` — the client's own model (every preset of the paper's recipe).
- ``compose`` — expert composition: the client's extractor and every expert's, frozen, side by side; one linear
  head over ``[own ‖ expert_1 ‖ …]`` starts as the client's head (zeros on the experts' features), so before
  training it predicts exactly what the client's model does. ``query_rows: experts`` starts each query class's
  row from the experts' own head rows for it instead (averaged over the experts of that class, zeros on the
  client's features): the decision the experts learnt from all their images of the class, not from five shots.
  Inference costs the client's model plus every expert's extractor (:func:`inference_cost`); ``distil`` then
  distils the composed model back into a model of the client's size (``MethodSpec.distilled``).
- ``merge`` — the client's extractor moved towards its experts': every floating-point tensor but the head's
  becomes ``(1 − w)·own + w·mean(experts)``. Only meaningful when every client started from one initial model
  (``local.shared_init``): separately initialised networks do not line up unit by unit.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
from torch import nn

from qkt_flower.errors import require
from qkt_flower.qkt.task import Expert

KINDS = ("copy", "compose", "merge")
QUERY_ROWS = ("zeros", "experts")


@dataclass
class StudentSpec:
    """Where the student starts: ``kind`` (``copy`` | ``compose`` | ``merge``) and each kind's option."""

    kind: str = "copy"
    merge_weight: float = 0.5
    query_rows: str = "zeros"
    distil: bool = False

    def check(self) -> None:
        """Refuse an unknown kind or row start and a merge weight outside [0, 1]."""
        require(self.kind in KINDS, "kind", self.kind, f"one of {list(KINDS)}")
        require(0 <= self.merge_weight <= 1, "merge_weight", self.merge_weight, "a float in [0, 1]")
        require(self.query_rows in QUERY_ROWS, "query_rows", self.query_rows, f"one of {list(QUERY_ROWS)}")
        require(not self.distil or self.kind == "compose", "distil", self.distil, "false unless kind is compose")


class Composed(nn.Module):
    """Frozen extractors side by side, one trainable linear head over their concatenated features."""

    def __init__(self, own: nn.Module, experts: list[Expert], query_rows: str = "zeros") -> None:
        super().__init__()
        extractors = [copy.deepcopy(m) for m in (own, *(e.model for e in experts))]
        dims = [m.head.in_features for m in extractors]
        self.head = nn.Linear(sum(dims), own.head.out_features).to(own.head.weight.device)
        with torch.no_grad():
            self.head.weight.zero_()
            self.head.weight[:, : dims[0]] = own.head.weight
            self.head.bias.copy_(own.head.bias)
            if query_rows == "experts":
                self._rows_from_experts(experts, dims)
        for m in extractors:
            m.head = nn.Identity()  # only their features are used
            m.requires_grad_(False)
        self.extractors = nn.ModuleList(extractors)
        self.train()  # the extractors in eval mode from the start

    def _rows_from_experts(self, experts: list[Expert], dims: list[int]) -> None:
        """Each query class's row: its experts' head rows on their own features, averaged; its bias, theirs."""
        starts = [sum(dims[: i + 1]) for i in range(len(experts))]
        for c in sorted({c for e in experts for c in e.query_classes}):
            mine = [i for i, e in enumerate(experts) if c in e.query_classes]
            self.head.weight[c] = 0.0
            for i in mine:
                head = experts[i].model.head
                self.head.weight[c, starts[i] : starts[i] + dims[i + 1]] = head.weight[c] / len(mine)
            self.head.bias[c] = torch.stack([experts[i].model.head.bias[c] for i in mine]).mean()

    def train(self, mode: bool = True) -> Composed:
        """Only the head follows ``mode``: the extractors stay in eval mode (frozen, BatchNorm statistics included)."""
        super().train(mode)
        self.extractors.eval()
        return self

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """``[own ‖ expert_1 ‖ …]`` features."""
        return torch.cat([m.features(x) for m in self.extractors], dim=-1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits of the shared head."""
        return self.head(self.features(x))


@torch.no_grad()
def merged(own: nn.Module, experts: list[nn.Module], weight: float) -> nn.Module:
    """A copy of ``own`` whose non-head floating-point tensors are ``(1 − weight)·own + weight·mean(experts)``."""
    student = copy.deepcopy(own)
    if not experts or weight == 0:
        return student
    states = [e.state_dict() for e in experts]
    for name, tensor in student.state_dict().items():
        if name.startswith("head.") or not tensor.is_floating_point():
            continue
        mean = torch.stack([s[name].to(tensor.device, tensor.dtype) for s in states]).mean(dim=0)
        tensor.mul_(1 - weight).add_(mean, alpha=weight)
    return student


def initial_student(local_model: nn.Module, experts: list[Expert], spec: StudentSpec) -> nn.Module:
    """The student query learning trains, from the client's model and its experts."""
    if spec.kind == "compose":
        return Composed(local_model, experts, spec.query_rows)
    if spec.kind == "merge":
        return merged(local_model, [e.model for e in experts], spec.merge_weight)
    return copy.deepcopy(local_model)


def parameter_count(model: nn.Module) -> int:
    """Parameters a forward pass uses (a :class:`Composed` model's unused heads were removed)."""
    return sum(p.numel() for p in model.parameters())


def forward_flops(model: nn.Module, input_shape: tuple[int, ...]) -> int:
    """FLOPs of one forward pass on one input (torch's FLOP counter: convolutions and matmuls)."""
    from torch.utils.flop_counter import FlopCounterMode

    param = next(model.parameters())
    x = torch.zeros(1, *input_shape, device=param.device, dtype=param.dtype)
    was_training = model.training
    model.eval()
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        model(x)
    model.train(was_training)
    return int(counter.get_total_flops())


def inference_cost(student: nn.Module, local_model: nn.Module, input_shape: tuple[int, ...]) -> dict[str, float]:
    """The student's parameters and FLOPs per image as multiples of the client's own model."""
    return {
        "params": parameter_count(student) / parameter_count(local_model),
        "flops": forward_flops(student, input_shape) / forward_flops(local_model, input_shape),
    }
