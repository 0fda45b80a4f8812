"""A node reads the config a message carries as plain values: it never resolves an interpolation with its own
environment, never builds an object from a YAML tag, and refuses both on one line (crafted messages, sent straight
to the ClientApp's handlers)."""

import pickle
import time

import pytest
from flwr.app import ConfigRecord, Context, Message, Metadata, RecordDict
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
