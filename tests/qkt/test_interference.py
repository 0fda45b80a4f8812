"""Interference: what keeps a querying client's local classes while it learns the query (calibration, gates)."""

import pytest
import torch
from torch import nn

from qkt_flower.data.datasets import ImageDataset
from qkt_flower.data.loaders import Batch
from qkt_flower.models.cnn import SmallCNN
from qkt_flower.qkt.calibrate import (
    CalibrationSpec,
    accuracy_keeping_shift,
    calibrate_query_bias,
    calibration_images,
    query_bias_shift,
    query_margins,
)
from qkt_flower.qkt.learn import query_learning
from qkt_flower.qkt.method import MethodSpec, PhaseSpec
from qkt_flower.qkt.task import Expert, QueryTask, Teachers
from qkt_flower.qkt.terms import Outputs, QueryDistillation


def test_query_margins_and_shift_by_hand():
    logits = torch.tensor([[0.0, 1.0, 3.0], [2.0, 0.0, 1.0], [0.0, 0.0, 0.5], [1.0, 0.0, 0.9]])
    m = query_margins(logits, (2,))  # class 2 is the query class
    assert m.tolist() == pytest.approx([2.0, -1.0, 0.5, -0.1])
    assert query_bias_shift(m, 0.0) == pytest.approx(2.0, abs=1e-4)  # no local row may stay above 0
    assert query_bias_shift(m, 0.25) == pytest.approx(0.5, abs=1e-4)  # one of four may
    assert query_bias_shift(m, 0.0) > 2.0  # strictly: a row exactly at 0 would tie
    assert query_bias_shift(m, 0.5) == 0.0  # already at most half
    assert query_bias_shift(m[m < 0], 0.0) == 0.0  # never raises the query bias


def test_accuracy_keeping_shift_spends_only_the_accuracy_the_new_model_gained_by_hand():
    margins = torch.tensor([2.0, 1.0, 0.5, -1.0])  # rows 0-2 are called the query class, row 3 is not
    right_otherwise = torch.tensor([True, True, False, True])  # without the query, rows 0, 1 and 3 are right
    # the original got 2 of 4 right; without query predictions the new model gets 3: one row may stay a false query
    original = torch.tensor([True, True, False, False])
    assert accuracy_keeping_shift(margins, right_otherwise, original, 0.0) == pytest.approx(1.0, abs=1e-4)
    # a 25-point drop allowed: both right-otherwise rows may stay false queries, row 2 costs nothing
    assert accuracy_keeping_shift(margins, right_otherwise, original, 0.25) == 0.0
    # the original got 3 right: every right-otherwise row must leave the query class (strictly: shift > 2)
    three = torch.tensor([True, True, True, False])
    assert accuracy_keeping_shift(margins, right_otherwise, three, 0.0) > 2.0
    # the original got all 4 right: no shift reaches it, the caller keeps its false-query bound
    assert accuracy_keeping_shift(margins, right_otherwise, torch.ones(4, dtype=torch.bool), 0.0) is None


class _Linear(nn.Module):
    """A model whose ``head`` is the whole network, so logits are easy to reason about."""

    def __init__(self) -> None:
        super().__init__()
        self.head = nn.Linear(64, 3)

    def forward(self, x):
        return self.head(x.flatten(1))


def _data(n_per_class=(40, 40, 5), seed=0):
    gen = torch.Generator().manual_seed(seed)
    labels = torch.cat([torch.full((n,), c) for c, n in enumerate(n_per_class)])
    images = (torch.rand(len(labels), 1, 8, 8, generator=gen) * 255).to(torch.uint8)
    return ImageDataset(images, labels, ("a", "b", "q"), (0.5,), (0.25,))


def test_calibration_bounds_the_false_query_share_on_the_images_it_saw():
    torch.manual_seed(0)
    model = _Linear()
    with torch.no_grad():
        model.head.bias[2] += 5.0  # a head that calls everything the query class
    data = _data()
    before = model.head.bias.detach().clone()
    shift = calibrate_query_bias(model, data, (2,), (0, 1), 0.05)
    assert shift > 0
    after = model.head.bias.detach()
    assert torch.equal(after[:2], before[:2]) and float(after[2]) == pytest.approx(float(before[2]) - shift)
    with torch.no_grad():
        pred = model((data.images.float() / 255 - 0.5) / 0.25).argmax(-1)
    local = data.labels < 2
    assert int((pred[local] == 2).sum()) <= int(0.05 * int(local.sum()))


def test_task_balancing_does_not_up_weight_a_clients_minority_classes():
    from qkt_flower.data.loaders import balanced_weights

    labels = torch.tensor([0] * 60 + [1] * 30 + [2] * 5 + [3] * 3)  # local 0, 1; query 2; minority class 3
    every = balanced_weights(labels)
    task = balanced_weights(labels, classes=(2, 0, 1))
    share = lambda w, c: float(w[labels == c].sum() / w.sum())  # noqa: E731
    assert share(every, 3) == pytest.approx(0.25)  # balancing every present class: 3 images drawn like a local class
    assert share(task, 0) == pytest.approx(share(task, 1)) == pytest.approx(share(task, 2))
    assert share(task, 3) == pytest.approx(3 / 60 * share(task, 0))  # weighed like images of the largest class


def _method(calibration: CalibrationSpec, shots: int = 0, local: int = 0, teachers: bool = True) -> MethodSpec:
    spec = MethodSpec(teachers=teachers, calibration=calibration,
                      phases=[PhaseSpec(epochs=1, batch_size=16, epoch_samples=None, lr=1e-2)])  # fmt: skip
    spec.transfer.augment_shots, spec.transfer.augment_local = shots, local
    return spec


def test_consistent_query_distillation_drops_a_teachers_wrong_answers_by_hand():
    """One expert of query class 2 that knows classes 0 and 2: its term on a sample counts only where the gate
    (label it knows) and consistency (it predicts the label) both hold; the loss is the mean over those pairs."""
    labels = torch.tensor([0, 1, 0, 2])
    logits = torch.tensor([[[3.0, 0.0, 1.0], [0.0, 0.0, 2.0], [0.0, 0.0, 2.0], [0.0, 0.0, 4.0]]])
    data = ImageDataset(torch.zeros(4, 1, 2, 2, dtype=torch.uint8), labels, ("a", "b", "q"), (0.5,), (0.25,))
    task = QueryTask(data, (2,), (0, 1))
    teachers = Teachers([Expert(nn.Identity(), (2,), (0, 2))], nn.Identity(), data, "cpu")
    teachers.__dict__["logits"] = logits  # the cached logits, given by hand
    from qkt_flower.qkt.losses import collapsed_kd

    student = Outputs(torch.zeros(4, 3), torch.zeros(4, 2))
    batch = Batch(torch.zeros(4), labels, torch.arange(4))
    per_sample = collapsed_kd(student.logits, logits[0], torch.tensor([2]), 2.0)
    # sample 0: known, right -> in; 1: label 1 unknown (gate) -> out; 2: known, wrong ("query") -> out; 3: in
    expected = float((per_sample[0] + per_sample[3]) / 2)
    assert float(QueryDistillation().prepare(task, teachers)(student, batch)) == pytest.approx(expected, rel=1e-5)
    # without consistency sample 2 counts too; without the gate as well, sample 1 joins
    loose = QueryDistillation(consistent=False).prepare(task, teachers)(student, batch)
    assert float(loose) == pytest.approx(float(per_sample[[0, 2, 3]].mean()), rel=1e-5)
    ungated = QueryDistillation(consistent=False, gate=False).prepare(task, teachers)(student, batch)
    assert float(ungated) == pytest.approx(float(per_sample.mean()), rel=1e-5)


def test_jittered_calibration_bounds_false_queries_on_the_copies_for_qkt_and_the_control():
    torch.manual_seed(0)
    data, spec = _data(), CalibrationSpec(max_false_query=0.0, augment=3)
    copies = calibration_images(data, (0, 1), spec, seed=5)
    assert len(copies) == 3 * int((data.labels < 2).sum())  # 3 jittered copies of every local image, no shot
    assert set(copies.labels.tolist()) == {0, 1} and not torch.equal(copies.images[: (data.labels < 2).sum()],
                                                                      data.images[data.labels < 2])  # fmt: skip
    assert calibration_images(data, (0, 1), CalibrationSpec(0.0, augment=0), seed=5) is data  # augment 0: the images
    local, teacher = SmallCNN(1, 3, image_size=8), SmallCNN(1, 3, image_size=8)
    with torch.no_grad():
        local.head.bias[2] += 5.0  # a local model that calls everything the query class: calibration must act
    task = QueryTask(data, (2,), (0, 1))
    qkt, info = query_learning(local, task, [Expert(teacher, (2,), (1, 2))], _method(spec), seed=5)
    control, _ = query_learning(local, task, [], _method(spec, teachers=False), seed=5)
    for model in (qkt, control):
        with torch.no_grad():
            pred = model((copies.images.float() / 255 - 0.5) / 0.25).argmax(-1)
        assert not bool((pred == 2).any())  # max_false_query = 0 on the very copies both were calibrated on
    assert info["calibration_shift"] > 0


def test_calibration_measures_the_clients_own_images_not_the_transfer_sets_jittered_copies():
    """With jittered shots and local copies in the transfer set, calibration still measures the client's own
    images: the result equals calibrating by hand on them after the same training."""
    data, task = _data(), QueryTask(_data(), (2,), (0, 1))
    seen = {}
    spec = _method(CalibrationSpec(0.0, augment=0), shots=4, local=2)

    def keep(name, model):
        seen[name] = {k: v.clone() for k, v in model.state_dict().items()}

    model, info = query_learning(SmallCNN(1, 3, image_size=8), task, [], spec, seed=5, on_phase_end=keep)
    by_hand = SmallCNN(1, 3, image_size=8)
    by_hand.load_state_dict(seen["joint"])
    by_hand.eval()
    shift = calibrate_query_bias(by_hand, data, (2,), (0, 1), 0.0)
    assert shift == pytest.approx(info["calibration_shift"]) and torch.equal(by_hand.head.bias, model.head.bias)
