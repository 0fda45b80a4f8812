"""Exact checks of the algorithm pieces on hand-made tensors."""

import copy
import math

import pytest
import torch

from qkt_flower.data.datasets import ImageDataset
from qkt_flower.models.cnn import SmallCNN
from qkt_flower.qkt.engine import OptimSpec
from qkt_flower.qkt.losses import collapsed_kd, collapsed_log_probs
from qkt_flower.qkt.mask import expert_mask, mask_quality, select_experts
from qkt_flower.qkt.phases import Expert, PhaseSpec, QKTSpec, QueryTask, query_learning
from qkt_flower.qkt.probe import check_probe_reply, make_probe, probe_scores


def test_relative_rule_on_hand_made_probe_answers():
    scores = torch.tensor([0.50, 0.30, 0.12, 0.05, 0.03])  # C = 5: threshold lam / C
    assert expert_mask(scores, "relative", 1.0).tolist() == [True, True, False, False, False]  # >= 0.2
    assert expert_mask(scores, "relative", 0.5).tolist() == [True, True, True, False, False]  # >= 0.1
    assert expert_mask(scores, "topk", 3).tolist() == [True, True, True, False, False]
    assert expert_mask(scores, "max_ratio", 0.5).tolist() == [True, True, False, False, False]  # >= 0.25


def test_experts_and_fallback():
    scores = {1: torch.tensor([0.7, 0.2, 0.1]), 2: torch.tensor([0.1, 0.8, 0.1]), 3: torch.tensor([0.5, 0.4, 0.1])}
    masks = {k: expert_mask(s, "relative", 1.0) for k, s in scores.items()}  # threshold 1/3
    sel = select_experts(masks, scores, (1, 2))
    assert sel.experts[1] == [2, 3]
    assert sel.experts[2] == [1] and sel.fallbacks == [2]  # nobody passes 1/3 on class 2: ties -> first top scorer
    assert sel.relevant == [1, 2, 3]


def test_mask_quality_hand_computed():
    masks = {1: torch.tensor([True, True, False]), 2: torch.tensor([False, True, True])}
    truth = {1: torch.tensor([True, False, False]), 2: torch.tensor([False, True, True])}
    q = mask_quality(masks, truth)
    assert q["precision"] == pytest.approx(3 / 4) and q["recall"] == 1.0


def test_probe_reply_validation():
    assert check_probe_reply(torch.tensor([0.5, 0.5]), 2) is None
    assert "non-finite" in check_probe_reply(torch.tensor([float("nan"), 1.0]), 2)
    assert "expected 3" in check_probe_reply(torch.tensor([0.5, 0.5]), 3)
    assert "sum" in check_probe_reply(torch.tensor([0.5, 0.6]), 2)
    assert "numeric" in check_probe_reply("abc", 2)


def test_probe_is_reproducible_and_scores_sum_to_one():
    assert torch.equal(make_probe((1, 4, 4), 8, seed=3), make_probe((1, 4, 4), 8, seed=3))
    model = SmallCNN(1, 4, image_size=8)
    s = probe_scores(model, make_probe((1, 8, 8), 16, seed=0), temperature=10.0)
    assert s.shape == (4,) and float(s.sum()) == pytest.approx(1.0, abs=1e-5)


def test_collapsed_log_probs_hand_computed():
    logits = torch.log(torch.tensor([[0.5, 0.3, 0.2]]))
    out = collapsed_log_probs(logits, torch.tensor([0])).exp()
    assert out.tolist()[0] == pytest.approx([0.5, 0.5])
    out = collapsed_log_probs(logits, torch.tensor([1, 2])).exp()
    assert out.tolist()[0] == pytest.approx([0.3, 0.2, 0.5])
    student = torch.log(torch.tensor([[0.25, 0.25, 0.5]]))
    kd = collapsed_kd(student, logits, torch.tensor([0]), temperature=1.0)  # KL([.5,.5] || [.25,.75])
    expected = 0.5 * math.log(0.5 / 0.25) + 0.5 * math.log(0.5 / 0.75)
    assert float(kd) == pytest.approx(expected, rel=1e-5)


def _toy_task():
    gen = torch.Generator().manual_seed(0)
    labels = torch.tensor([0] * 30 + [1] * 30 + [2] * 3)
    images = (torch.rand(len(labels), 1, 8, 8, generator=gen) * 255).to(torch.uint8)
    images[labels == 1] //= 2
    data = ImageDataset(images, labels, ("a", "b", "c"), (0.5,), (0.25,))
    return QueryTask(data, query_classes=(2,), local_classes=(0, 1))


def _spec(mode):
    phase = PhaseSpec(epochs=1, batch_size=16, optim=OptimSpec("adam", 1e-2), beta=1.0, gamma=1.0)
    return QKTSpec(mode=mode, phase1=phase, phase2=phase)


def test_phase2_changes_only_the_head():
    torch.manual_seed(0)
    local, teacher = SmallCNN(1, 3, image_size=8), SmallCNN(1, 3, image_size=8)
    original = copy.deepcopy(local.state_dict())
    experts = [Expert(teacher, (2,), (1, 2))]
    student, _ = query_learning(local, _toy_task(), experts, _spec("light"), seed=0)
    after = student.state_dict()
    changed = {k for k in after if not torch.equal(after[k], original[k])}
    assert changed == {"head.weight", "head.bias"}  # features and BatchNorm statistics bit-identical
    assert all(torch.equal(v, original[k]) for k, v in local.state_dict().items())  # input model untouched


def test_phase1_changes_the_feature_extractor_and_is_deterministic():
    torch.manual_seed(0)
    local, teacher = SmallCNN(1, 3, image_size=8), SmallCNN(1, 3, image_size=8)
    experts = [Expert(teacher, (2,), (1, 2))]
    a, _ = query_learning(local, _toy_task(), experts, _spec("two-phase"), seed=5)
    b, _ = query_learning(local, _toy_task(), experts, _spec("two-phase"), seed=5)
    assert not torch.equal(a.body[0].weight, local.body[0].weight)
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values(), strict=True))


def test_unknown_mode_is_refused():
    with pytest.raises(ValueError, match="mode"):
        query_learning(SmallCNN(1, 3, image_size=8), _toy_task(), [], _spec("nope"), seed=0)


def test_check_weights_refuses_other_shapes_and_nan():
    from qkt_flower.models import build_model
    from qkt_flower.qkt.probe import check_weights

    good = build_model("cnn", (1, 28, 28), 10, seed=0).state_dict()
    expected = {k: v.shape for k, v in good.items()}
    assert check_weights(good, expected) is None
    other_labels = build_model("cnn", (1, 28, 28), 11, seed=0).state_dict()
    assert "expected" in check_weights(other_labels, expected)
    name = next(k for k, v in good.items() if v.is_floating_point())
    assert "non-finite" in check_weights({**good, name: good[name] * float("nan")}, expected)
    assert "not the agreed model" in check_weights({k: v for k, v in good.items() if k != name}, expected)


def test_mixed_precision_autocasts_training_only_where_asked():
    from qkt_flower import workflow as wf
    from qkt_flower.config import load_config
    from qkt_flower.qkt.engine import mixed_precision

    seen = []

    class Probe(torch.nn.Module):  # records the dtype its linear layer computes in
        def __init__(self):
            super().__init__()
            self.lin = torch.nn.Linear(4, 3)

        def forward(self, x):
            out = self.lin(x)
            seen.append(out.dtype)
            return out

    from qkt_flower.data.loaders import Batches
    from qkt_flower.qkt.engine import cross_entropy_step, fit

    batches = Batches(torch.randn(32, 4), torch.randint(0, 3, (32,)), 8)
    model = Probe()
    fit(model, batches, cross_entropy_step, OptimSpec(), 1)
    with mixed_precision(torch.bfloat16):
        history = fit(model, batches, cross_entropy_step, OptimSpec(), 1)
    fit(model, batches, cross_entropy_step, OptimSpec(), 1)  # the setting does not leak out of the block
    assert seen == [torch.float32] * 4 + [torch.bfloat16] * 4 + [torch.float32] * 4
    assert math.isfinite(history[0]["loss"]) and model.lin.weight.dtype == torch.float32  # master weights stay fp32
    cpu = torch.device("cpu")
    with wf.precision(load_config([]), cpu):  # auto: never on CPU
        fit(model, batches, cross_entropy_step, OptimSpec(), 1)
    with wf.precision(load_config(["amp=true"]), cpu):
        fit(model, batches, cross_entropy_step, OptimSpec(), 1)
    assert seen[12:] == [torch.float32] * 4 + [torch.bfloat16] * 4


def test_controls_and_baselines_get_qkts_whole_network_budget():
    """The joint phase trains the whole network for phase 1's + phase 2's epochs; the teacher-free control
    and the fine-tuned baselines must get as many, or a gap to QKT would be a gap in training."""
    phase1 = PhaseSpec(epochs=2, batch_size=64, optim=OptimSpec("adam", 1e-3))
    phase2 = PhaseSpec(epochs=5, batch_size=128, optim=OptimSpec("sgd", 1e-2))
    joint = QKTSpec("joint", phase1, phase2).whole_network_budget()
    assert (joint.epochs, joint.batch_size, joint.optim) == (7, 64, phase1.optim)
    for mode in ("two-phase", "phase1", "light"):
        assert QKTSpec(mode, phase1, phase2).whole_network_budget() == phase1


def test_shuffled_patches_permutes_whole_patches_reproducibly():
    from qkt_flower.qkt.local import shuffled_patches

    x = torch.arange(2 * 1 * 8 * 9, dtype=torch.float32).reshape(2, 1, 8, 9)  # 9 columns: the last is cropped
    out = shuffled_patches(x, torch.Generator().manual_seed(0))
    assert out.shape == (2, 1, 8, 8)
    corners = [(r, c) for r in range(0, 8, 2) for c in range(0, 8, 2)]
    for i in range(2):  # the same 16 patches of 2 x 2 pixels, in another order
        patches = {tuple(x[i, 0, r : r + 2, c : c + 2].flatten().tolist()) for r, c in corners}
        assert {tuple(out[i, 0, r : r + 2, c : c + 2].flatten().tolist()) for r, c in corners} == patches
    assert not torch.equal(out, x[..., :8])
    assert torch.equal(out, shuffled_patches(x, torch.Generator().manual_seed(0)))


def test_outlier_exposure_makes_the_model_unsure_on_shuffled_images_only():
    """Two classes told apart by layout (left vs top half bright): shuffling the patches destroys it.

    With outlier exposure the model stays right on the images and answers near-uniform on shuffled copies;
    without it, it is sure of one class on them too.
    """
    from qkt_flower.qkt.local import shuffled_patches, train_local

    gen = torch.Generator().manual_seed(0)
    images = (torch.rand(96, 1, 8, 8, generator=gen) * 60).to(torch.uint8)
    labels = torch.tensor([0, 1] * 48)
    images[labels == 0, :, :, :4] += 180
    images[labels == 1, :, :4, :] += 180
    data = ImageDataset(images, labels, ("left", "top"), (0.5,), (0.25,))
    x = (images.float() / 255 - 0.5) / 0.25
    shuffled = shuffled_patches(x, torch.Generator().manual_seed(1))

    def confidence(weight: float) -> tuple[float, float]:
        model = SmallCNN(1, 2, image_size=8)
        history = train_local(model, data, 8, 32, OptimSpec("adam", 3e-3), seed=0, outlier_exposure=weight)
        assert ("oe" in history[-1]) == (weight > 0)
        model.eval()
        with torch.no_grad():
            accuracy = float((model(x).argmax(-1) == labels).float().mean())
            sure = float(torch.softmax(model(shuffled), -1).max(-1).values.mean())
        return accuracy, sure

    plain, exposed = confidence(0.0), confidence(1.0)
    assert plain[0] > 0.95 and exposed[0] > 0.95
    assert exposed[1] < 0.7 and exposed[1] < plain[1] - 0.1, (plain, exposed)
