"""Checks of the interference remedies: query-bias calibration, consistent KD, expert inversion, relational KD."""

import dataclasses

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
    split_holdout,
)
from qkt_flower.qkt.engine import OptimSpec
from qkt_flower.qkt.phases import (
    Expert,
    PhaseSpec,
    QKTSpec,
    QueryDistillation,
    QueryTask,
    balanced_finetune,
    calibration_split,
    consistent_pairs,
    prepare_transfer_set,
    query_learning,
    shot_trust,
)
from qkt_flower.qkt.relation import RelationDistillation, RelationSpec, cosine_similarities, relation_loss
from qkt_flower.qkt.synthesis import SynthesisSpec, invert, invert_experts


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


def test_holdout_takes_a_share_of_every_local_class_and_nothing_else():
    data = _data()
    train, held = split_holdout(data, (0, 1), 0.25, seed=3)
    assert held.class_counts().tolist() == [10, 10, 0]
    assert train.class_counts().tolist() == [30, 30, 5]
    assert split_holdout(data, (0, 1), 0.0, seed=3) == (data, None)


def test_consistent_pairs_drop_a_teachers_wrong_answers():
    logits = torch.tensor([[[3.0, 0.0, 1.0], [0.0, 0.0, 2.0], [0.0, 1.0, 0.0]]])  # one expert, three samples
    labels = torch.tensor([0, 1, 1])
    assert consistent_pairs(logits, labels).tolist() == [[True, False, True]]  # it calls sample 1 the query class


def test_shot_trust_weighs_experts_by_their_belief_in_the_query_shots():
    labels = torch.tensor([2, 2, 0, 1])  # two shots of query class 2, two local images
    believer = torch.tensor([[9.0, 0.0, 9.0], [0.0, 0.0, 9.0], [9.0, 0.0, 0.0], [0.0, 9.0, 0.0]])
    doubter = torch.tensor([[0.0, 0.0, 0.0], [9.0, 0.0, 0.0], [0.0, 0.0, 9.0], [0.0, 9.0, 0.0]])
    logits = torch.stack([believer, doubter])
    experts = [Expert(nn.Identity(), (2,), (0, 2)), Expert(nn.Identity(), (2,), (0, 2))]
    trust = shot_trust(experts, logits, labels)
    assert trust[0] == pytest.approx((0.5 + 1.0) / 2, abs=1e-3)  # p(2|x) = 0.5 and ~1 on its two shots
    assert trust[1] == pytest.approx((1 / 3 + 0.0) / 2, abs=1e-3)  # uniform on one shot, "class 0" on the other
    no_shots = shot_trust(experts, logits, torch.tensor([0, 0, 0, 1]))
    assert no_shots.tolist() == [1.0, 1.0]  # nothing to judge by: uniform

    # in the loss: the doubter's term on the same sample weighs trust[1] / trust[0] as much as the believer's
    phase = PhaseSpec(epochs=1, batch_size=4, optim=OptimSpec())
    kd = QueryDistillation(experts, logits, 3, QKTSpec("two-phase", phase, phase, weighting="shots"), labels)
    plain = QueryDistillation(experts, logits, 3, QKTSpec("two-phase", phase, phase), labels)
    batch = Batch(torch.zeros(1), torch.tensor([0]), torch.tensor([2]))  # local image 2, class 0 (both gates open)
    student = torch.zeros(1, 3)
    from qkt_flower.qkt.losses import collapsed_kd

    terms = [float(collapsed_kd(student, logits[k, [2]], torch.tensor([2]), 2.0, False)) for k in range(2)]
    w = (trust / trust.sum()).tolist()
    assert float(kd(student, batch)) == pytest.approx(w[0] * terms[0] + w[1] * terms[1], rel=1e-4)
    assert float(plain(student, batch)) == pytest.approx((terms[0] + terms[1]) / 2, rel=1e-4)
    assert float(kd(student, batch)) != pytest.approx(float(plain(student, batch)), rel=1e-3)


def test_calibrated_query_learning_reports_its_shift_and_the_control_matches_its_holdout():
    torch.manual_seed(0)
    local, teacher = SmallCNN(1, 3, image_size=8), SmallCNN(1, 3, image_size=8)
    phase = PhaseSpec(epochs=1, batch_size=16, optim=OptimSpec("adam", 1e-2), beta=1.0, gamma=1.0)
    spec = QKTSpec("two-phase", phase, phase, calibration=CalibrationSpec(max_false_query=0.0, holdout=0.2))
    task = QueryTask(_data(), (2,), (0, 1))
    student, info = query_learning(local, task, [Expert(teacher, (2,), (1, 2))], spec, seed=0)
    assert info["calibration_shift"] >= 0
    _, held = split_holdout(task.data, (0, 1), 0.2, seed=0)
    with torch.no_grad():
        pred = student((held.images.float() / 255 - 0.5) / 0.25).argmax(-1)
    assert not bool((pred == 2).any())  # max_false_query = 0 on the held-out local images


def test_jittered_calibration_bounds_false_queries_on_the_copies_for_qkt_and_the_control():
    torch.manual_seed(0)
    data, spec = _data(), CalibrationSpec(max_false_query=0.0, augment=3)
    copies = calibration_images(data, (0, 1), spec, seed=5)
    assert len(copies) == 3 * int((data.labels < 2).sum())  # 3 jittered copies of every local image, no shot
    assert set(copies.labels.tolist()) == {0, 1} and not torch.equal(copies.images[: (data.labels < 2).sum()],
                                                                      data.images[data.labels < 2])  # fmt: skip
    assert calibration_images(data, (0, 1), CalibrationSpec(0.0), seed=5) is data  # augment = 0: the images
    local, teacher = SmallCNN(1, 3, image_size=8), SmallCNN(1, 3, image_size=8)
    with torch.no_grad():
        local.head.bias[2] += 5.0  # a local model that calls everything the query class: calibration must act
    phase = PhaseSpec(epochs=1, batch_size=16, optim=OptimSpec("adam", 1e-2), beta=1.0, gamma=1.0)
    task = QueryTask(data, (2,), (0, 1))
    qkt, info = query_learning(local, task, [Expert(teacher, (2,), (1, 2))], QKTSpec("two-phase", phase, phase,
                               calibration=spec), seed=5)  # fmt: skip
    control = balanced_finetune(local, task, phase, seed=5, calibration=spec)
    for model in (qkt, control):
        with torch.no_grad():
            pred = model((copies.images.float() / 255 - 0.5) / 0.25).argmax(-1)
        assert not bool((pred == 2).any())  # max_false_query = 0 on the very copies both were calibrated on
    assert info["calibration_shift"] > 0


def test_calibration_measures_the_clients_own_images_not_the_transfer_sets_jittered_copies():
    data, task = _data(), QueryTask(_data(), (2,), (0, 1))
    phase = PhaseSpec(epochs=1, batch_size=16, optim=OptimSpec("adam", 1e-2), beta=1.0, gamma=1.0)
    calibration = CalibrationSpec(0.05, augment=3)
    spec = QKTSpec("joint", phase, phase, calibration=calibration, augment_shots=4, augment_local=2)
    grown, own, _ = prepare_transfer_set(task, [], spec, seed=5, device="cpu")
    local_rows = int((data.labels < 2).sum())
    shots = len(data) - local_rows
    assert len(grown.data) == len(data) + 4 * shots + 2 * local_rows  # the transfer set holds the copies ...
    assert torch.equal(own.images, data.images) and torch.equal(own.labels, data.labels)  # ... calibration does not
    held_spec = dataclasses.replace(spec.calibration, holdout=0.25)
    train, held = calibration_split(task, held_spec, seed=5)
    assert len(held) == len(split_holdout(data, (0, 1), 0.25, seed=5)[1]) and len(train) + len(held) == len(data)


def test_inversion_yields_images_the_expert_calls_the_query_class():
    torch.manual_seed(0)
    expert = SmallCNN(1, 3, image_size=8)
    expert.train()
    with torch.no_grad():  # give BatchNorm non-trivial running statistics
        for _ in range(5):
            expert(torch.randn(32, 1, 8, 8))
    expert.eval()
    before = {k: v.clone() for k, v in expert.state_dict().items()}
    spec = SynthesisSpec(per_class=12, steps=100, lr=0.1, bn_weight=0.01, jitter=0, batch_size=8)
    x = invert(expert, 2, 12, (1, 8, 8), spec, torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert float((expert(x).argmax(-1) == 2).float().mean()) >= 0.9
    assert all(torch.equal(v, before[k]) for k, v in expert.state_dict().items())  # the expert is untouched
    like = _data()
    syn = invert_experts([(expert, (2,))], like, spec, seed=0)
    assert len(syn) == 12 and syn.images.dtype == torch.uint8 and set(syn.labels.tolist()) == {2}
    again = invert_experts([(expert, (2,))], like, spec, seed=0)
    assert torch.equal(syn.images, again.images)  # seeded
    assert len(invert_experts([(expert, (2,))], like, dataclasses.replace(spec, per_class=0), seed=0)) == 0


def test_task_balancing_does_not_up_weight_a_clients_minority_classes():
    from qkt_flower.data.loaders import balanced_weights

    labels = torch.tensor([0] * 60 + [1] * 30 + [2] * 5 + [3] * 3)  # local 0, 1; query 2; minority class 3
    every = balanced_weights(labels)
    task = balanced_weights(labels, classes=(2, 0, 1))
    share = lambda w, c: float(w[labels == c].sum() / w.sum())  # noqa: E731
    assert share(every, 3) == pytest.approx(0.25)  # balancing every present class: 3 images drawn like a local class
    assert share(task, 0) == pytest.approx(share(task, 1)) == pytest.approx(share(task, 2))
    assert share(task, 3) == pytest.approx(3 / 60 * share(task, 0))  # weighed like images of the largest class


def test_expert_labelled_mixes_are_blends_gated_by_the_local_class():
    from qkt_flower.data.loaders import normalizer
    from qkt_flower.qkt.mixing import MixDistillation, MixSpec

    torch.manual_seed(0)
    data = _data()  # classes 0, 1 local (40 each), 2 the query (5 shots)
    expert = SmallCNN(1, 3, image_size=8)
    spec = MixSpec(weight=1.0, low=0.3, high=0.7, batch_size=32)
    knows_0 = MixDistillation([Expert(expert, (2,), (0, 2))], data, (2,), (0, 1), spec, 2.0, seed=0, device="cpu")
    x, local_labels = knows_0.batch()
    again, _ = MixDistillation([Expert(expert, (2,), (0, 2))], data, (2,), (0, 1), spec, 2.0, 0, "cpu").batch()
    assert torch.equal(x, again)  # seeded
    assert set(local_labels.tolist()) <= {0, 1}
    norm = normalizer(data)(data.images)
    lo, hi = norm.amin(), norm.amax()
    assert x.shape == (32, 1, 8, 8) and bool((x >= lo - 1e-5).all() and (x <= hi + 1e-5).all())  # convex blends
    assert not any(torch.allclose(xi, ni) for xi in x[:4] for ni in norm)  # blends, not copies of real images

    student = SmallCNN(1, 3, image_size=8)
    loss = knows_0(student)
    assert loss.item() > 0
    loss.backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in student.parameters())
    # an expert that knows neither local class may not label a blend with one: the term vanishes
    blind = MixDistillation([Expert(expert, (2,), (2,))], data, (2,), (0, 1), spec, 2.0, seed=0, device="cpu")
    assert blind(SmallCNN(1, 3, image_size=8)).item() == 0.0
    assert not MixDistillation([], data, (2,), (0, 1), spec, 2.0, 0, "cpu").active  # no expert: nothing to do


def _tiny_query_learning(mode: str, **options):
    """QKT on the 3-class toy task (one teacher that knows every class), seeded; ``options`` go to the spec."""
    torch.manual_seed(0)
    local, teacher = SmallCNN(1, 3, image_size=8), SmallCNN(1, 3, image_size=8)
    phase = PhaseSpec(epochs=1, batch_size=16, optim=OptimSpec("adam", 1e-2), beta=1.0, gamma=1.0)
    task = QueryTask(_data(), (2,), (0, 1))
    return query_learning(local, task, [Expert(teacher, (2,), (0, 1, 2))], QKTSpec(mode, phase, phase, **options), 0)


def _weight_distance(a: nn.Module, b: nn.Module) -> float:
    with torch.no_grad():
        return float(sum((p - q).abs().sum() for p, q in zip(a.parameters(), b.parameters(), strict=True)))


def test_query_learning_with_mixes_runs_and_differs():
    from qkt_flower.qkt.mixing import MixSpec

    plain, _ = _tiny_query_learning("two-phase")
    mixed, info = _tiny_query_learning("two-phase", mix=MixSpec(1.0))
    assert "mix" in info["history"]["phase1"][0]
    assert _weight_distance(plain, mixed) > 0


def test_relation_loss_sees_geometry_not_the_feature_basis():
    torch.manual_seed(0)
    student = torch.randn(12, 8)
    rotation, _ = torch.linalg.qr(torch.randn(8, 8))
    wide = torch.cat([student @ rotation, torch.zeros(12, 24)], dim=1)  # another width, another basis, same geometry
    assert cosine_similarities(student).shape == (12, 12)
    assert relation_loss(student, 3.0 * wide).item() == pytest.approx(0.0, abs=1e-6)
    assert relation_loss(student, torch.randn(12, 32)).item() > 0.05  # unrelated geometry
    assert relation_loss(student[:1], wide[:1]).item() == 0.0  # one sample has no pair


def test_relation_term_is_gated_to_known_classes_and_needs_a_query_sample():
    torch.manual_seed(0)
    labels = torch.tensor([0, 0, 1, 1, 2, 2])  # 2 is the query class
    idx = torch.arange(6)
    teacher = torch.randn(6, 5)
    term = RelationDistillation([teacher], [(0, 2)], query_classes=(2,), num_classes=3)
    student = torch.randn(6, 4, requires_grad=True)
    loss = term(student, labels, idx)
    assert loss.item() > 0
    loss.backward()
    assert student.grad[2:4].abs().sum() == 0  # class 1 is outside the expert's mask: its rows play no part
    assert student.grad[[0, 1, 4, 5]].abs().sum() > 0
    # only classes 0 and 2 count: the loss is the plain loss on those rows
    rows = torch.tensor([0, 1, 4, 5])
    assert loss.item() == pytest.approx(relation_loss(student[rows], teacher[rows]).item())
    # a batch with no query sample teaches nothing
    no_query = term(student[:4], labels[:4], idx[:4])
    assert no_query.item() == 0.0
    assert not RelationDistillation([], [], (2,), 3).active


def test_query_learning_with_relational_kd_runs_and_differs():
    plain, _ = _tiny_query_learning("joint")
    related, info = _tiny_query_learning("joint", relation=RelationSpec(1.0))
    assert info["history"]["joint"][0]["relation"] > 0
    assert _weight_distance(plain, related) > 0
    # off: the joint phase is the same as without the option
    again, info = _tiny_query_learning("joint", relation=RelationSpec(0.0))
    assert "relation" not in info["history"]["joint"][0]
    assert all(torch.equal(a, b) for a, b in zip(plain.state_dict().values(), again.state_dict().values(), strict=True))


def test_balanced_keep_targets_are_logit_adjusted_to_a_uniform_local_prior():
    from qkt_flower.qkt.phases import KeepDistillation, balanced_logits

    labels = torch.tensor([0] * 30 + [1] * 10 + [2] * 5)  # local 0 (30 images) and 1 (10); 2 is the query
    logits = torch.zeros(4, 3)
    adjusted = balanced_logits(logits, labels, (0, 1))
    # odds of 1 over 0 move by the inverse of their shares (10 vs 30); the sum over local columns is kept
    assert float(adjusted[0, 1] - adjusted[0, 0]) == pytest.approx(torch.log(torch.tensor(3.0)).item(), abs=1e-6)
    assert float(adjusted[0, :2].sum()) == pytest.approx(0.0, abs=1e-6)
    assert torch.equal(adjusted[:, 2], logits[:, 2]) and torch.equal(logits, torch.zeros(4, 3))  # not in place
    # with balanced shares nothing moves
    assert torch.allclose(balanced_logits(logits, torch.tensor([0, 1, 0, 1]), (0, 1)), logits)

    task = QueryTask(ImageDataset(torch.zeros(45, 1, 8, 8, dtype=torch.uint8), labels, ("a", "b", "q"),
                                  (0.5,), (0.25,)), (2,), (0, 1))  # fmt: skip
    phase = PhaseSpec(epochs=1, batch_size=8, optim=OptimSpec("adam", 1e-2))
    original = torch.randn(45, 3)
    plain = KeepDistillation(original, task, QKTSpec("joint", phase, phase))
    balanced = KeepDistillation(original, task, QKTSpec("joint", phase, phase, keep_balanced=True))
    assert torch.equal(plain.logits, original)
    assert torch.allclose(balanced.logits, balanced_logits(original, labels, (0, 1)))
    batch = Batch(torch.zeros(4, 1, 8, 8), labels[[0, 1, 30, 31]], torch.tensor([0, 1, 30, 31]))
    student = torch.randn(4, 3)
    assert plain(student, batch).item() != pytest.approx(balanced(student, batch).item())


def test_consistent_keep_skips_what_the_original_model_gets_wrong():
    from qkt_flower.qkt.phases import KeepDistillation

    labels = torch.tensor([0, 0, 1, 1, 2])  # 2 is the query class
    task = QueryTask(ImageDataset(torch.zeros(5, 1, 8, 8, dtype=torch.uint8), labels, ("a", "b", "q"),
                                  (0.5,), (0.25,)), (2,), (0, 1))  # fmt: skip
    phase = PhaseSpec(epochs=1, batch_size=8, optim=OptimSpec("adam", 1e-2))
    original = torch.tensor([[3.0, 0, 0], [0, 3.0, 0], [0, 3.0, 0], [3.0, 0, 0], [0, 0, 3.0]])  # rows 1, 3 wrong
    keep = KeepDistillation(original, task, QKTSpec("joint", phase, phase, keep_consistent=True))
    plain = KeepDistillation(original, task, QKTSpec("joint", phase, phase))
    student = torch.randn(5, 3, requires_grad=True)
    batch = Batch(torch.zeros(5, 1, 8, 8), labels, torch.arange(5))
    keep(student, batch).backward()
    assert student.grad[[1, 3, 4]].abs().sum() == 0  # its two mistakes and the query sample play no part
    assert student.grad[[0, 2]].abs().sum() > 0
    right = torch.tensor([0, 2])
    only_right = Batch(batch.x[right], labels[right], right)
    assert keep(student, batch).item() == pytest.approx(plain(student[right], only_right).item())
