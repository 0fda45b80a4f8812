"""A node's trust boundary, attacked with crafted messages sent straight to the ClientApp's handlers.

It reads the config a message carries as plain values (never resolving an interpolation with its own environment,
never building an object from a YAML tag), takes its paths from its own settings only, refuses work over its limits
and malformed probes or experts, and replies a short code and message, never its paths or exception text."""

import pickle
import time
from pathlib import Path

import pytest
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, Metadata, RecordDict
from omegaconf import OmegaConf

from qkt_flower.config import compose_config, to_config
from qkt_flower.errors import ConfigError
from qkt_flower.fl import client_app
from qkt_flower.fl import records as R

SECRET = "node-secret-42"


def _yaml(**changes) -> str:
    tree = OmegaConf.to_container(compose_config([]), resolve=True)
    for key, value in changes.items():
        group, field = key.split("__") if "__" in key else (None, key)
        (tree[group] if group else tree)[field] = value
    return OmegaConf.to_yaml(OmegaConf.create(tree))


def _message(text: str) -> Message:
    """A probe message as a node receives it (metadata set by the SuperLink)."""
    content = RecordDict({R.EXPERIMENT: ConfigRecord({"yaml": text}), R.PROBE_SPEC: ConfigRecord({"n": 1})})
    meta = Metadata(run_id=1, message_id="m", src_node_id=0, dst_node_id=1, reply_to_message_id="", group_id="1",
                    created_at=time.time(), ttl=60.0, message_type=f"{R.PROBE}")  # fmt: skip
    return Message(content=content, metadata=meta)


@pytest.mark.parametrize(
    "text",
    [
        _yaml(device="cuda:${oc.env:QKT_NODE_SECRET,0}"),  # the node's environment, into the reply's error text
        _yaml(dataset__root="${oc.env:QKT_NODE_SECRET}/data"),
        _yaml(device="\\${oc.env:QKT_NODE_SECRET}"),  # escaped: one resolution away from an interpolation
    ],
    ids=["device", "dataset-root", "escaped"],
)
def test_an_interpolation_in_a_message_is_refused_without_reading_the_environment(monkeypatch, text):
    monkeypatch.setenv("QKT_NODE_SECRET", SECRET)
    R.experiment_from_yaml.cache_clear()
    with pytest.raises(ConfigError, match="a plain value") as err:
        R.experiment_from_yaml(text)
    assert SECRET not in str(err.value)
    context = Context(run_id=1, node_id=1, node_config={"partition-id": 1}, state=RecordDict(), run_config={})
    with pytest.raises(client_app.NodeError, match="^config: ") as err:  # refused before any data or model
        client_app.probe(_message(text), context)
    assert SECRET not in str(err.value)


def test_a_failing_node_replies_a_code_not_its_paths_or_exception_text(tmp_path):
    """Flower sends an exception's text back to the server: a node's own paths and errors stay in its log."""
    hidden = tmp_path / "node-private-folder"
    node = {"partition-id": 1, "data-root": str(hidden)}
    context = Context(run_id=1, node_id=1, node_config=node, state=RecordDict(), run_config={})
    with pytest.raises(client_app.NodeError, match="^data: ") as err:  # the node's data root does not exist
        client_app.train(_message(_yaml()), context)
    assert "node-private-folder" not in str(err.value)
    with pytest.raises(client_app.NodeError, match="^state: this node has no trained model yet"):
        client_app.weights(_message(_yaml()), context)


def test_an_unexpected_failure_leaves_only_its_type(caplog):
    @client_app.guarded
    def handler(msg, context):
        raise ValueError(f"could not open {SECRET}/weights.pt")

    with pytest.raises(client_app.NodeError, match=r"^internal: ValueError in handler \(see the node's log\)$"):
        handler(None, None)
    assert SECRET in caplog.text  # the node keeps the whole story in its own log
    again = pickle.loads(pickle.dumps(client_app.NodeError("state", "no model")))
    assert (again.code, str(again)) == ("state", "state: no model")


def test_a_submitted_run_config_cannot_resolve_the_servers_environment(monkeypatch):
    from qkt_flower.fl.server_app import config_yaml_from_run_config

    monkeypatch.setenv("QKT_SERVER_SECRET", SECRET)
    with pytest.raises(ConfigError, match="no interpolation") as err:
        config_yaml_from_run_config({"overrides": "dataset.root=${oc.env:QKT_SERVER_SECRET}"})
    assert SECRET not in str(err.value)
    with pytest.raises(ConfigError, match="a plain value"):  # the server's own checks, on any entry point
        to_config(compose_config(["dataset.root=\\${oc.env:QKT_SERVER_SECRET}"]))


def test_a_yaml_tag_builds_nothing(tmp_path):
    marker = tmp_path / "code-ran"
    text = f"seed: !!python/object/apply:os.system ['touch {marker}']\n" + _yaml().split("\n", 1)[1]
    with pytest.raises(ConfigError, match="plain YAML"):
        R.experiment_from_yaml(text)
    assert not marker.exists()
    with pytest.raises(ConfigError, match="a mapping"):
        R.experiment_from_yaml("- just\n- a list\n")


def test_the_plain_config_of_a_run_is_read_back_unchanged():
    text = _yaml(seed=3)
    assert R.experiment_from_yaml(text).seed == 3


# -- a node's own paths and limits ------------------------------------------------------------------------------

FMNIST = "/usr/share/datasets/fashion-mnist"
needs_fmnist = pytest.mark.skipif(not Path(FMNIST).is_dir(), reason="needs Fashion-MNIST")
SMALL = {
    "dataset__train_per_class": 100,
    "dataset__test_per_class": 10,
    "local__epochs": 1,
    "progress": False,
    "partition__num_clients": 5,
}


def _context(**node) -> Context:
    return Context(run_id=1, node_id=1, node_config={"partition-id": 1, **node}, state=RecordDict(), run_config={})


def _train_message(text: str, probe: dict | None = None) -> Message:
    records = {R.EXPERIMENT: ConfigRecord({"yaml": text})}
    if probe is not None:
        records[R.PROBE_SPEC] = ConfigRecord(probe)
    meta = Metadata(run_id=1, message_id="t", src_node_id=0, dst_node_id=1, reply_to_message_id="", group_id="1",
                    created_at=time.time(), ttl=60.0, message_type=R.TRAIN)  # fmt: skip
    return Message(content=RecordDict(records), metadata=meta)


@needs_fmnist
def test_a_node_takes_its_paths_from_its_own_config_never_from_a_message(tmp_path):
    """A message naming the server's folders (data root through ``..``, model and split caches) makes the node
    read and write nothing there: it reads its own data root and keeps its model in its own ``cache-dir``."""
    server = tmp_path / "server-chosen"
    text = _yaml(**SMALL, dataset__root=f"/etc/../{server}/data", local__cache_dir=str(server / "models"),
                 partition_cache=str(server / "splits"), checkpoint_dir=str(server / "ckpt"))  # fmt: skip
    mine = tmp_path / "node-cache"
    context = _context(**{"data-root": FMNIST, "cache-dir": str(mine)})
    reply = client_app.train(_train_message(text), context)
    assert reply.content.metric_records[R.METRICS]["client"] == 1
    assert not server.exists()  # nothing read from or written under the server's folders
    assert list(mine.rglob("model.pt"))  # the node's model is where the node said


@needs_fmnist
def test_a_node_with_a_cache_folder_keeps_where_its_model_is_not_the_model(tmp_path):
    """A simulation holds every node's context in memory: with a cache folder the state names the model's file
    (a few bytes, not 1.7 MB per node), a weights message is answered from it, and a vanished file is refused."""
    import torch

    context = _context(**{"data-root": FMNIST, "cache-dir": str(tmp_path / "models")})
    client_app.train(_train_message(_yaml(**SMALL)), context)
    assert not [k for k in context.state.array_records if k.startswith(R.LOCAL_MODEL)]
    (key,) = [k for k in context.state.config_records if k.startswith(f"{R.LOCAL_MODEL}.")]
    file = Path(str(context.state.config_records[key]["file"]))
    assert file.is_relative_to(tmp_path / "models") and file.is_file()
    sent = R.state_dict_of(
        client_app.weights(_message(_yaml(**SMALL)), context).content.array_records[R.TEACHER_ARRAYS]
    )
    saved = torch.load(file, weights_only=True)
    assert sent.keys() == saved.keys() and all(torch.equal(sent[k], saved[k]) for k in saved)
    file.unlink()
    with pytest.raises(client_app.NodeError, match=r"^state: this node's trained model left its cache folder"):
        client_app.weights(_message(_yaml(**SMALL)), context)


def test_the_server_sends_no_path_or_checkpoint_key():
    text = _yaml(dataset__root="/srv/private/data", local__cache_dir="/srv/cache", partition_cache="/srv/splits",
                 checkpoint_dir="/srv/ckpt", resume=True)  # fmt: skip
    sent = R.node_view(text)
    assert "/srv" not in sent and "checkpoint_dir" not in sent and "resume" not in sent
    cfg = R.experiment_from_yaml(sent)  # still a complete experiment for the node
    assert cfg.dataset.name == "fashion-mnist" and cfg.local.epochs == 2


@pytest.mark.parametrize(
    ("changes", "node", "match"),
    [
        ({"local__epochs": 10**6}, {}, r"^limit: local\.epochs=1000000 exceeds this node's max-epochs=200$"),
        ({"local__epochs": 3}, {"max-epochs": 2}, r"^limit: local\.epochs=3 exceeds this node's max-epochs=2$"),
        ({"local__batch_size": 10**7}, {}, r"^limit: local\.batch_size=10000000 exceeds .* max-batch-size=4096$"),
        ({}, {"max-probe-n": 100}, r"^limit: a probe of 256 inputs exceeds this node's max-probe-n=100$"),
        ({"dataset__download": True}, {"download": "false"}, r"^limit: dataset\.download=true, but this node"),
        ({}, {"max-epochs": "lots"}, r"^config: node-config\.max-epochs refused: an integer >= 0$"),
        ({}, {"data_root": "/x"}, r"^config: node-config\.data_root refused: one of \["),
    ],
    ids=["epochs", "node-max-epochs", "batch", "probe-n", "download", "bad-node-config", "unknown-node-key"],
)
def test_work_over_a_nodes_limits_is_refused_before_any_data_loads(tmp_path, changes, node, match):
    context = _context(**{"data-root": str(tmp_path / "absent"), **node})  # loading would fail with data:
    with pytest.raises(client_app.NodeError, match=match):
        client_app.train(_train_message(_yaml(**changes)), context)


@needs_fmnist
def test_a_model_over_max_parameters_and_a_foreign_probe_shape_are_refused(tmp_path):
    with pytest.raises(client_app.NodeError, match=r"^limit: model cnn has [\d,]+ parameters, over .*=1,000$"):
        client_app.train(_train_message(_yaml(**SMALL)), _context(**{"max-parameters": 1000}))
    spec = {"seed": 0, "shape": [3, 32, 32], "n": 8, "kind": "gaussian", "temperature": 10.0, "standardize": False}
    with pytest.raises(client_app.NodeError, match=r"^limit: a probe of shape \[3, 32, 32\] is not this node's"):
        client_app.train(_train_message(_yaml(**SMALL), probe=spec), _context())


@pytest.mark.parametrize(
    ("spec", "match"),
    [
        ({"n": "256"}, r"^config: probe\.n refused"),
        ({"shape": [1, -28, 28]}, r"^config: probe\.shape refused"),
        ({"reply_noise": -1.0}, r"^config: probe\.reply_noise refused"),
        ({"kind": "bytes"}, r"^config: probe\.kind refused"),
    ],
)
def test_a_malformed_probe_spec_is_refused(spec, match):
    good = {"seed": 0, "shape": [], "n": 8, "kind": "gaussian", "temperature": 10.0, "standardize": False}
    with pytest.raises(ConfigError) as err:
        R.unpack_probe(ConfigRecord({**good, **spec}))
    with pytest.raises(client_app.NodeError, match=match):
        client_app.guarded(lambda msg, context: R.unpack_probe(ConfigRecord({**good, **spec})))(None, None)
    assert err.value.key.startswith("probe.")


@needs_fmnist
def test_a_node_that_opts_out_answers_no_probe_and_crafted_experts_are_refused():
    context = _context(probe="false")
    spec = {"seed": 0, "shape": [], "n": 8, "kind": "gaussian", "temperature": 10.0, "standardize": False}
    reply = client_app.train(_train_message(_yaml(**SMALL), probe=spec), context)
    assert R.PROBE_SCORES not in reply.content.metric_records
    assert reply.content.metric_records[R.METRICS]["answers-probe"] == 0
    with pytest.raises(client_app.NodeError, match=r"^refused: this node does not answer the noise probe"):
        client_app.probe(_message(_yaml(**SMALL)), context)
    # the querying node (client 0) trains, then gets experts whose masks or weights are not what it can use
    querier = Context(run_id=1, node_id=2, node_config={"partition-id": 0}, state=RecordDict(), run_config={})
    client_app.train(_train_message(_yaml(**SMALL)), querier)
    (weights,) = querier.state.array_records.values()  # its one model
    bad_masks = R.pack_masks({3: ((7,), (7, 99))})
    with pytest.raises(client_app.NodeError, match=r"^config: expert 3's mask names classes outside"):
        client_app.qkt(_qkt_message(_yaml(**SMALL), {f"{R.EXPERT_ARRAYS}3": weights}, bad_masks), querier)
    query = R.experiment_from_yaml(_yaml(**SMALL)).query.classes or [4]
    masks = R.pack_masks({3: (tuple(query[:1]), tuple(query[:1]))})
    small = ArrayRecord({k: v[:1] if v.dim() else v for k, v in R.state_dict_of(weights).items()})
    with pytest.raises(client_app.NodeError, match=r"^config: expert 3's weights: .* has shape"):
        client_app.qkt(_qkt_message(_yaml(**SMALL), {f"{R.EXPERT_ARRAYS}3": small}, masks), querier)


def _qkt_message(text: str, arrays: dict, masks) -> Message:
    records = {R.EXPERIMENT: ConfigRecord({"yaml": text}), R.EXPERT_MASKS: masks, **arrays}
    meta = Metadata(run_id=1, message_id="q", src_node_id=0, dst_node_id=2, reply_to_message_id="", group_id="1",
                    created_at=time.time(), ttl=60.0, message_type=R.QKT)  # fmt: skip
    return Message(content=RecordDict(records), metadata=meta)


def test_node_settings_from_the_environment_and_back():
    from qkt_flower.fl.node import NodeSettings

    env = {"QKT_NODE_CONFIG": "data-root='/data/my fmnist' cache-dir=/cache max-epochs=5 probe=false noise-seed=3"}
    node = NodeSettings.from_environment(env)
    assert (node.data_root, node.cache_dir, node.max_epochs, node.probe, node.noise_seed) == (
        "/data/my fmnist", "/cache", 5, False, 3)  # fmt: skip
    assert NodeSettings.from_environment({"QKT_NODE_CONFIG": node.as_node_config()}) == node
    assert NodeSettings.from_node_config({"max-epochs": 7}, node).max_epochs == 7  # node config over defaults
    with pytest.raises(ConfigError, match="QKT_NODE_CONFIG"):
        NodeSettings.from_environment({"QKT_NODE_CONFIG": "data-root"})


def test_reply_noise_blurs_an_answer_reproducibly_and_keeps_it_a_distribution():
    import torch

    from qkt_flower.qkt.probe import add_reply_noise, check_probe_reply

    scores = torch.tensor([0.5, 0.3, 0.2] + [0.0] * 7)
    a, b = add_reply_noise(scores, 0.1, (0, 3)), add_reply_noise(scores, 0.1, (0, 3))
    assert torch.equal(a, b) and not torch.equal(a, scores) and check_probe_reply(a, 10) is None
    assert not torch.equal(add_reply_noise(scores, 0.1, None), add_reply_noise(scores, 0.1, None))
    assert not torch.equal(add_reply_noise(scores, 0.1, (0, 4)), a)  # every teacher draws its own noise
    with pytest.raises(ConfigError, match="reply_noise"):
        to_config(compose_config(["strategy.probe.reply_noise=-0.1"]))


@needs_fmnist
def test_a_simulated_nodes_noisy_answer_is_the_reference_runners():
    """With ``reply_noise`` a simulated node (``noise-seed`` = the run's seed) answers what the in-process pipeline
    computes for that teacher, so simulation and reference agree; a deployed node's noise is fresh randomness."""
    import torch

    from qkt_flower.experiments import steps

    tree = OmegaConf.to_container(compose_config(["dataset.train_per_class=100", "dataset.test_per_class=10",
                                                  "local.epochs=1", "partition.num_clients=5",
                                                  "strategy.probe.reply_noise=0.05"]), resolve=True)  # fmt: skip
    text = OmegaConf.to_yaml(OmegaConf.create(tree))
    cfg = R.experiment_from_yaml(text)
    context = _context(**{"noise-seed": cfg.seed})
    spec = R.pack_probe(cfg, None)
    answer = client_app.train(_train_message(text, probe=dict(spec)), context).content.metric_records[R.PROBE_SCORES]
    fed = client_app.federation(client_app.settings(context).run(cfg))
    model = client_app.local_model(cfg, fed, context, 1)
    expected = steps.answer_probe(cfg, model, fed.train.input_shape, "cpu", 1)
    assert torch.allclose(torch.tensor(answer["scores"], dtype=torch.float64), expected.double(), atol=1e-7)
    exact = steps.answer_probe(R.experiment_from_yaml(_yaml(**SMALL)), model, fed.train.input_shape, "cpu", 1)
    assert not torch.allclose(expected.double(), exact.double(), atol=1e-3)
    fresh = client_app.probe(_message_with(text, spec), _context_with_model(context))
    assert not torch.allclose(torch.tensor(fresh.content.metric_records[R.PROBE_SCORES]["scores"]),
                              torch.tensor(answer["scores"]), atol=1e-6)  # fmt: skip


def _message_with(text: str, spec) -> Message:
    message = _message(text)
    message.content.config_records[R.PROBE_SPEC] = spec
    return message


def _context_with_model(trained: Context) -> Context:
    """A node without ``noise-seed`` holding ``trained``'s model."""
    context = _context()
    for key, record in trained.state.array_records.items():
        context.state[key] = record
    return context


@needs_fmnist
def test_a_weights_message_names_one_of_the_nodes_models_or_is_refused():
    """The weights step reads no data: it sends the model the message names, and refuses an index it does not hold."""
    context = _context()
    client_app.train(_train_message(_yaml(**SMALL)), context)
    sent = client_app.weights(_message(_yaml(**SMALL)), context).content.array_records[R.TEACHER_ARRAYS]
    (kept,) = [r for key, r in context.state.array_records.items() if key.startswith(R.LOCAL_MODEL)]
    import torch

    theirs, mine = R.state_dict_of(sent), R.state_dict_of(kept)
    assert theirs.keys() == mine.keys() and all(torch.equal(theirs[k], mine[k]) for k in mine)
    for index in (1, -1, "0", True):
        message = _message(_yaml(**SMALL))
        message.content.config_records[R.MODEL] = ConfigRecord({"index": index})
        with pytest.raises(client_app.NodeError, match=r"^config: model index .* this node holds 1 model"):
            client_app.weights(message, context)
