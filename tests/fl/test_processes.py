"""Process-tree helpers the launcher and the deployment rely on to stop a SuperNode and everything it started."""

import signal
import subprocess
import sys
import time

from qkt_flower.fl.processes import alive, descendants, stop_trees

# a parent that starts two grandchildren (like a SuperNode starting flwr-clientapp processes), then waits
TREE = "import subprocess, sys, time; [subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(300)']) for _ in range(2)]; time.sleep(300)"  # noqa: E501


def _tree() -> tuple[subprocess.Popen, list[int]]:
    parent = subprocess.Popen([sys.executable, "-c", TREE])
    deadline = time.monotonic() + 30
    while len(descendants(parent.pid)) < 2 and time.monotonic() < deadline:
        time.sleep(0.05)
    kids = descendants(parent.pid)
    assert len(kids) == 2, "the test tree did not start"
    return parent, kids


def test_kill_returns_only_when_the_whole_tree_is_gone():
    parent, kids = _tree()
    stop_trees([parent.pid], grace=0.0, sig=signal.SIGKILL)
    parent.wait(timeout=5)
    assert not any(alive(p) for p in [parent.pid, *kids])


def test_terminate_stops_the_tree_within_the_grace_period():
    parent, kids = _tree()
    start = time.monotonic()
    stop_trees([parent.pid], grace=5.0)
    parent.wait(timeout=5)
    assert not any(alive(p) for p in [parent.pid, *kids])
    assert time.monotonic() - start < 5.0  # SIGTERM ends sleeping Python processes at once
