"""Exact checks of the algorithm pieces on hand-made tensors."""

import copy
import math

import pytest
import torch

from qkt_flower.data.datasets import ImageDataset
from qkt_flower.errors import ConfigError
from qkt_flower.models.cnn import SmallCNN
from qkt_flower.qkt.engine import OptimSpec
from qkt_flower.qkt.learn import query_learning
from qkt_flower.qkt.losses import collapsed_kd, collapsed_log_probs
from qkt_flower.qkt.mask import expert_mask, mask_quality, select_experts
from qkt_flower.qkt.method import MethodSpec, PhaseSpec
from qkt_flower.qkt.probe import check_probe_reply, make_probe, probe_scores
from qkt_flower.qkt.task import Expert, QueryTask


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


def test_max_experts_keeps_the_highest_scores_of_each_query_class():
    scores = {k: torch.tensor([0.1, 0.9 - 0.1 * k, 0.1]) for k in range(1, 6)}
    scores[6] = scores[5].clone()  # ties: the lower client id stays
    masks = {k: torch.tensor([False, True, False]) for k in scores}
    assert select_experts(masks, scores, (1,)).experts[1] == [1, 2, 3, 4, 5, 6]
    assert select_experts(masks, scores, (1,), max_experts=2).experts[1] == [1, 2]
    assert select_experts(masks, {k: s.flip(0).flip(0) for k, s in scores.items()}, (1,), 7).experts[1] == [
        1,
        2,
        3,
        4,
        5,
        6,
    ]
    scores[6][1] = 0.95
    assert select_experts(masks, scores, (1,), max_experts=2).experts[1] == [1, 6]


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


def _method(*phases: tuple[str, list[str]]) -> MethodSpec:
    """A method of the given (trains, terms) phases, 1 epoch each, no jitter or calibration (fast, exact)."""
    spec = MethodSpec(
        phases=[
            PhaseSpec(name=f"p{i}", trains=trains, terms=terms, epochs=1, batch_size=16, epoch_samples=None, lr=1e-2)
            for i, (trains, terms) in enumerate(phases)
        ]
    )
    spec.transfer.augment_shots = spec.transfer.augment_local = 0
    spec.calibration.max_false_query = None
    return spec


def test_phase2_changes_only_the_head():
    torch.manual_seed(0)
    local, teacher = SmallCNN(1, 3, image_size=8), SmallCNN(1, 3, image_size=8)
    original = copy.deepcopy(local.state_dict())
    experts = [Expert(teacher, (2,), (1, 2))]
    student, _ = query_learning(local, _toy_task(), experts, _method(("head", ["ce", "query", "keep"])), seed=0)
    after = student.state_dict()
    changed = {k for k in after if not torch.equal(after[k], original[k])}
    assert changed == {"head.weight", "head.bias"}  # features and BatchNorm statistics bit-identical
    assert all(torch.equal(v, original[k]) for k, v in local.state_dict().items())  # input model untouched


def test_phase1_changes_the_feature_extractor_and_is_deterministic():
    torch.manual_seed(0)
    local, teacher = SmallCNN(1, 3, image_size=8), SmallCNN(1, 3, image_size=8)
    experts = [Expert(teacher, (2,), (1, 2))]
    two_phase = _method(("all", ["ce", "query"]), ("head", ["ce", "query", "keep"]))
    a, _ = query_learning(local, _toy_task(), experts, two_phase, seed=5)
    b, _ = query_learning(local, _toy_task(), experts, two_phase, seed=5)
    assert not torch.equal(a.body[0].weight, local.body[0].weight)
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values(), strict=True))


def test_unknown_terms_and_parameter_sets_are_refused_with_their_path():
    with pytest.raises(ConfigError) as err:
        _method(("all", ["ce", "nope"])).check()
    assert err.value.key == "phases.0.terms"
    with pytest.raises(ConfigError) as err:
        _method(("all", ["ce"]), ("body", ["ce"])).check()
    assert err.value.key == "phases.1.trains"
    spec = _method(("all", ["ce", "query"]))
    spec.terms.query.weight = 25.0  # 25 * 2^2 = 100: it once made the model predict the query class for everything
    with pytest.raises(ConfigError) as err:
        spec.check()
    assert err.value.key == "terms.query.weight"


def test_a_term_of_weight_zero_is_not_computed():
    local, teacher = SmallCNN(1, 3, image_size=8), SmallCNN(1, 3, image_size=8)
    method = _method(("all", ["ce", "query", "keep"]))
    method.terms.keep.weight = 0.0
    _, info = query_learning(local, _toy_task(), [Expert(teacher, (2,), (1, 2))], method, seed=0)
    assert set(info["history"]["p0"][0]) == {"ce", "query", "loss"}


def test_the_control_is_the_same_recipe_without_teacher_terms():
    """Fair by construction: same whole-network phases, budget, transfer set and calibration; no teacher term."""
    qkt = _method(("all", ["ce", "query"]), ("head", ["ce", "query", "keep"]))
    control = qkt.without_teachers()
    assert [(p.trains, p.terms, p.epochs) for p in control.phases] == [("all", ["ce"], 1)]
    assert control.transfer == qkt.transfer and control.calibration == qkt.calibration and not control.teachers
    local, teacher = SmallCNN(1, 3, image_size=8), SmallCNN(1, 3, image_size=8)
    a, info = query_learning(local, _toy_task(), [Expert(teacher, (2,), (1, 2))], control, seed=3)
    b, _ = query_learning(local, _toy_task(), [], control, seed=3)  # the experts are never used
    assert "teacher_logits" not in info["seconds"]
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values(), strict=True))


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
    from qkt_flower.config import load_config
    from qkt_flower.experiments import steps
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
    with steps.precision(load_config([]), cpu):  # auto: never on CPU
        fit(model, batches, cross_entropy_step, OptimSpec(), 1)
    with steps.precision(load_config(["amp=true"]), cpu):
        fit(model, batches, cross_entropy_step, OptimSpec(), 1)
    assert seen[12:] == [torch.float32] * 4 + [torch.bfloat16] * 4


def test_controls_and_baselines_get_qkts_whole_network_budget():
    """The joint phase trains the whole network for 7 epochs; the teacher-free control and the one-round
    baselines must get as many, or a gap to QKT would be a gap in training."""
    from qkt_flower.config import load_config

    joint = load_config([]).method
    assert joint.whole_network_budget() == joint.phases[0] and joint.phases[0].epochs == 7
    assert joint.without_teachers().phases[0].epochs == 7
    two = load_config(["method=qkt_two_phase"]).method
    assert two.whole_network_budget() == two.phases[0] and two.without_teachers().phases == [
        PhaseSpec(**{**two.phases[0].__dict__, "terms": ["ce"]})
    ]
    assert load_config(["method=qkt_light"]).method.whole_network_budget() is None
