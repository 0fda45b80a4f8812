"""Key files: private keys are owner-only from the moment they exist, also over an older world-readable file."""

import os
import stat

from cryptography.hazmat.primitives import serialization

from qkt_flower.deploy.credentials import make_node_key, make_tls


def _mode(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


def test_private_keys_are_owner_only_whatever_the_umask_or_an_older_file(tmp_path):
    (tmp_path / "supernode-0").write_text("old")
    (tmp_path / "supernode-0").chmod(0o644)
    old_umask = os.umask(0)  # the loosest umask: nothing narrows the mode the file is created with
    try:
        node = make_node_key(tmp_path, "supernode-0")
        tls = make_tls(tmp_path, ("127.0.0.1",))
    finally:
        os.umask(old_umask)
    assert _mode(node.private) == 0o600 and _mode(tls.server_key) == 0o600
    serialization.load_ssh_private_key(node.private.read_bytes(), password=None)  # the old content is gone
    serialization.load_pem_private_key(tls.server_key.read_bytes(), password=None)
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "ca.crt",
        "server.key",
        "server.pem",
        "supernode-0",
        "supernode-0.pub",
    ]  # fmt: skip  (no partial file left)
