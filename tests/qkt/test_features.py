"""The experts' features as query learning's students and terms: composition, weight merge, L_feature."""

import pytest
import torch

from qkt_flower.config import load_config
from qkt_flower.data.datasets import ImageDataset
from qkt_flower.data.loaders import Batch
from qkt_flower.errors import ConfigError
from qkt_flower.experiments import steps
from qkt_flower.experiments.federated import initial_global_model
from qkt_flower.models import build_model
from qkt_flower.models.cnn import SmallCNN
from qkt_flower.qkt.compose import Composed, StudentSpec, inference_cost, merged, parameter_count
from qkt_flower.qkt.learn import loss_step, query_learning
from qkt_flower.qkt.method import MethodSpec, PhaseSpec
from qkt_flower.qkt.task import Expert, QueryTask, Teachers
from qkt_flower.qkt.terms import FeatureDistillation, Outputs, Terms


def _cnn(seed: int) -> SmallCNN:
    torch.manual_seed(seed)
    return SmallCNN(1, 3, 28, width=4).eval()


def _data(n: int = 30) -> ImageDataset:
    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (n, 1, 28, 28), dtype=torch.uint8, generator=g)
    return ImageDataset(images, torch.arange(n) % 3, ("a", "b", "q"), (0.5,), (0.25,))


def test_a_composed_student_starts_as_the_clients_model_and_trains_only_its_head():
    own, experts = _cnn(0), [_cnn(1), _cnn(2)]
    x = torch.randn(5, 1, 28, 28)
    composed = Composed(own, [Expert(e, (2,), (0, 2)) for e in experts])
    torch.testing.assert_close(composed(x), own(x))  # zeros on the experts' features: the client's predictions
    assert composed.features(x).shape == (5, 3 * own.head.in_features)
    trainable = [n for n, p in composed.named_parameters() if p.requires_grad]
    assert trainable == ["head.weight", "head.bias"]
    assert not any(m.training for m in Composed(_cnn(3).train(), []).extractors.modules())  # eval from the start
    composed.train()  # the extractors stay in eval mode: BatchNorm statistics are never updated
    before = composed.extractors[1].body[1].running_mean.clone()
    composed(x * 5 + 3)
    torch.testing.assert_close(composed.extractors[1].body[1].running_mean, before)
    body = parameter_count(own) - parameter_count(own.head)
    assert parameter_count(composed) == 3 * body + composed.head.weight.numel() + composed.head.bias.numel()
    cost = inference_cost(composed, own, (1, 28, 28))
    assert 2.9 < cost["flops"] < 3.1 and 2.8 < cost["params"] < 3.1


def test_a_weight_merge_moves_only_the_extractor_and_keeps_integer_buffers():
    own, a, b = _cnn(0), _cnn(1), _cnn(2)
    torch.testing.assert_close(
        merged(own, [a, b], 0.0).state_dict()["body.0.weight"], own.state_dict()["body.0.weight"]
    )
    half = merged(own, [a, b], 0.5).state_dict()
    mean = (a.state_dict()["body.0.weight"] + b.state_dict()["body.0.weight"]) / 2
    torch.testing.assert_close(half["body.0.weight"], 0.5 * own.state_dict()["body.0.weight"] + 0.5 * mean)
    torch.testing.assert_close(half["head.weight"], own.state_dict()["head.weight"])  # the client's own head
    assert half["body.1.num_batches_tracked"].dtype == torch.long
    full = merged(own, [a, b], 1.0).state_dict()
    torch.testing.assert_close(full["body.1.running_var"], (a.body[1].running_var + b.body[1].running_var) / 2)
    assert own.state_dict()["body.0.weight"].data_ptr() != half["body.0.weight"].data_ptr()  # own is not modified


def test_feature_distillation_is_zero_on_the_experts_own_features_and_gated_by_what_they_know():
    data = _data(6)
    expert = _cnn(1)
    task = QueryTask(data, (2,), (0, 1))
    teachers = Teachers([Expert(expert, (2,), (0, 2))], _cnn(0), data, "cpu")
    loss = FeatureDistillation(weight=1.0).prepare(task, teachers)
    target = teachers.features[0].clone()  # a normal tensor, as the student's features are
    with torch.no_grad():  # an identity projection, student features = the expert's: nothing to learn
        loss.projections[0].weight.copy_(torch.eye(target.shape[1]))
        loss.projections[0].bias.zero_()
    batch = Batch(data.images.float(), data.labels, torch.arange(6))
    with torch.no_grad():  # values only
        assert float(loss(Outputs(torch.zeros(6, 3), target), batch)) == pytest.approx(0.0, abs=1e-6)
        # wrong features on class-1 samples only: the expert does not know class 1, the gate hides them
        wrong = target.clone()
        wrong[data.labels == 1] = -wrong[data.labels == 1] - 1
        assert float(loss(Outputs(torch.zeros(6, 3), wrong), batch)) == pytest.approx(0.0, abs=1e-6)
        ungated = FeatureDistillation(weight=1.0, gate=False).prepare(task, teachers)
        ungated.load_state_dict(loss.state_dict())
        assert float(ungated(Outputs(torch.zeros(6, 3), wrong), batch)) > 0.1


def test_feature_distillation_trains_its_projection_with_the_student():
    data = _data()
    local, expert = _cnn(0), _cnn(1)
    method = MethodSpec(phases=[PhaseSpec(terms=["ce", "feature"], epochs=1, epoch_samples=30)], terms=Terms())
    method.terms.feature.weight = 1.0
    method.transfer.augment_shots = method.transfer.augment_local = 0
    task = QueryTask(data, (2,), (0, 1))
    teachers = Teachers([Expert(expert, (2,), (0, 1, 2))], local, data, "cpu")
    _, extras = loss_step(method, method.phases[0], task, teachers)
    assert len(extras) == 1 and len(list(extras[0].parameters())) == 2
    student, info = query_learning(local, task, [Expert(expert, (2,), (0, 1, 2))], method, seed=0)
    assert info["history"]["joint"][0]["feature"] > 0
    assert not torch.equal(student.body[0].weight, local.body[0].weight)


def test_query_learning_with_a_composed_student_leaves_the_local_model_alone():
    data = _data()
    local, expert = _cnn(0), _cnn(1)
    state = {k: v.clone() for k, v in local.state_dict().items()}
    method = MethodSpec(
        student=StudentSpec("compose"), phases=[PhaseSpec(name="compose", trains="head", epochs=2, epoch_samples=30)]
    )
    method.transfer.augment_shots = method.transfer.augment_local = 0
    task = QueryTask(data, (2,), (0, 1))
    student, _ = query_learning(local, task, [Expert(expert, (2,), (0, 1, 2))], method, seed=0)
    assert isinstance(student, Composed) and len(student.extractors) == 2
    for k, v in local.state_dict().items():
        torch.testing.assert_close(v, state[k])
    control, _ = query_learning(local, task, [], method.without_teachers(), seed=0)
    assert isinstance(control, SmallCNN)  # the control never composes


@pytest.mark.parametrize(
    ("overrides", "key"),
    [
        (["method=qkt_merge"], "method.student.kind"),  # a merge without shared-init models
        (["method=qkt_compose", "method.phases.0.trains=all"], "method.student.kind"),
        (
            ["method=qkt_light", "method.terms.feature.weight=1", "method.phases.0.terms=[ce,feature]"],
            "method.phases.0.terms",
        ),
        (
            ["method=qkt_merge", "local.shared_init=true", "method.student.merge_weight=1.5"],
            "method.student.merge_weight",
        ),
        (["method.student.kind=average"], "method.student.kind"),
        (["method.student.query_rows=random"], "method.student.query_rows"),
    ],
)
def test_feature_transfer_settings_that_cannot_run_are_refused(overrides, key):
    with pytest.raises(ConfigError) as err:
        load_config(overrides)
    assert err.value.key == key


def test_shared_init_starts_every_client_from_the_federated_baselines_model():
    cfg = load_config(["local.shared_init=true"])
    own = load_config([])
    start = initial_global_model(cfg, (1, 28, 28), 10).state_dict()
    for client in (0, 3):
        shared = build_model(cfg.model.name, (1, 28, 28), 10, steps.init_seed(cfg, client)).state_dict()
        torch.testing.assert_close(shared, start)
    apart = build_model(own.model.name, (1, 28, 28), 10, steps.init_seed(own, 3)).state_dict()
    assert not torch.equal(apart["body.0.weight"], start["body.0.weight"])
    assert steps.local_model_key(cfg) != steps.local_model_key(own)  # cached models never mix
    assert load_config(["local.shared_init=true", "method=qkt_merge"]).method.student.kind == "merge"


def test_query_rows_from_the_experts_predict_the_query_class_as_the_experts_do():
    own, a, b = _cnn(0), _cnn(1), _cnn(2)
    x = torch.randn(5, 1, 28, 28)
    composed = Composed(own, [Expert(a, (2,), (1, 2)), Expert(b, (2,), (2,))], query_rows="experts")
    with torch.no_grad():
        logits = composed(x)
        torch.testing.assert_close(logits[:, 2], (a(x)[:, 2] + b(x)[:, 2]) / 2)  # the experts' own decision
        torch.testing.assert_close(logits[:, :2], own(x)[:, :2])  # local classes: the client's model


def test_the_pooled_data_oracle_sees_every_query_image_of_the_federation_and_is_never_a_competitor():
    from qkt_flower.data.federation import build_federation
    from qkt_flower.experiments.headroom import ORACLE, oracle_model, pooled_task
    from qkt_flower.experiments.tables import claim_conditions

    cfg = load_config(["dataset.train_per_class=60", "dataset.test_per_class=10", "local.epochs=0", "progress=false",
                       "method.phases.0.epochs=1", "method.calibration.max_false_query=null"])  # fmt: skip
    fed = build_federation(cfg.dataset, cfg.partition, cfg.query, cfg.seed, cfg.partition_cache)
    s, labels = fed.scenario, fed.train.labels
    task = pooled_task(fed)
    query = torch.tensor(s.query_classes)
    everywhere = sum(int(torch.isin(labels[p], query).sum()) for p in s.partitions)
    assert int(torch.isin(task.data.labels, query).sum()) == everywhere > cfg.query.shots
    assert len(task.data) == len(s.partitions[s.client]) + everywhere - int(
        torch.isin(labels[s.partitions[s.client]], query).sum()
    )
    local = build_model(cfg.model.name, fed.train.input_shape, fed.train.num_classes, 0)
    assert isinstance(oracle_model(cfg, fed, local, "cpu"), SmallCNN)
    row = {"query_acc": 90.0, "local_acc": 90.0, "mean_acc": 90.0, "local_delta": 0.0}
    table = [
        {**row, "method": "QKT (default)", "query_acc": 50.0, "mean_acc": 70.0},
        {**row, "method": ORACLE},
        {**row, "method": "balanced-CE control", "query_acc": 40.0, "mean_acc": 65.0},
    ]
    assert "balanced-CE control" in claim_conditions(table, 20.0)[2][2]  # the oracle is a reference, not "best other"


def test_a_distilled_composition_ends_in_a_model_of_the_clients_size():
    data = _data()
    local, expert = _cnn(0), _cnn(1)
    phase = PhaseSpec(name="compose", trains="head", epochs=1, epoch_samples=30)
    method = MethodSpec(student=StudentSpec("compose", distil=True), phases=[phase])
    method.transfer.augment_shots = method.transfer.augment_local = 0
    task = QueryTask(data, (2,), (0, 1))
    student, info = query_learning(local, task, [Expert(expert, (2,), (0, 1, 2))], method, seed=0)
    assert isinstance(student, SmallCNN) and "distil.joint" in info["history"] and info["seconds"]["distil"] > 0
    assert info["history"]["distil.joint"][0]["query"] > 0  # the composed model taught the query class
    with pytest.raises(ConfigError):
        load_config(["method.student.distil=true"])  # distil needs a composition
