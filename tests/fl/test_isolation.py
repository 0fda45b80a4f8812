"""A ``qkt-flower`` simulation opens no socket another host could reach: it runs in a network namespace of its own.

Ray binds its GCS, raylets and workers to every interface (9 such sockets were seen during a 3-node simulation on
the host's network); in the namespace they exist only behind its loopback. The test samples this host's socket
tables (``/proc/net/tcp{,6}``, what ``ss -ltn`` reads) while a real simulation runs.
"""

import subprocess
import sys
import time
from pathlib import Path

import pytest

from qkt_flower.errors import ConfigError
from qkt_flower.fl import isolation

LOOPBACK = ("0100007F", "00000000000000000000000001000000", "0000000000000000FFFF00000100007F")  # 127.0.0.1, ::1


def _listening_outside_loopback() -> set[tuple[str, str]]:
    """(address, port) of every listening TCP socket of this network namespace not bound to loopback (hex)."""
    out = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            address, port = fields[1].split(":")
            if fields[3] == "0A" and address not in LOOPBACK:  # 0A: LISTEN
                out.add((address, port))
    return out


def test_network_modes():
    assert not isolation.wanted("host")
    if not isolation.available():
        with pytest.raises(ConfigError, match="simulation.network"):
            isolation.wanted("isolated")
        assert not isolation.wanted("auto")  # goes on, with a warning
    else:
        assert isolation.wanted("isolated") and isolation.wanted("auto")


OVERRIDES = ["dataset.train_per_class=200", "dataset.test_per_class=100", "local.epochs=1", "progress=false",
             "partition.num_clients=3", "query.classes=[1]", "control=false", "checkpoint_dir=null",
             "simulation.network=isolated"]  # fmt: skip
SAMPLING = (
    pytest.mark.slow,
    pytest.mark.skipif(not Path("/proc/net/tcp").is_file(), reason="reads Linux's socket tables"),
    pytest.mark.skipif(not isolation.available(), reason="this host allows no unprivileged network namespace"),
    pytest.mark.skipif(not Path("/usr/share/datasets/fashion-mnist").is_dir(), reason="needs Fashion-MNIST"),
)


def sampling(test):
    """The marks of a test that samples the socket tables during a real run."""
    for mark in SAMPLING:
        test = mark(test)
    return test


def _listening_during(module: str, args: list[str], cwd=None) -> set[tuple[str, str]]:
    """Run ``python -m module args`` to its end (it must succeed), sampling the host's listening sockets throughout.

    Returns those outside loopback that were not there before the run (Ray's servers live from its start to its end).
    """
    before = _listening_outside_loopback()
    run = subprocess.Popen([sys.executable, "-m", module, *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                           text=True, cwd=cwd)  # fmt: skip
    seen, deadline = set(), time.monotonic() + 900
    while run.poll() is None and time.monotonic() < deadline:
        seen |= _listening_outside_loopback() - before
        time.sleep(0.2)
    if run.poll() is None:
        run.kill()
        pytest.fail(f"{module} did not finish within 15 min")
    _, err = run.communicate()
    assert run.returncode == 0, err[-3000:]
    return seen


@sampling
def test_a_simulation_listens_on_nothing_another_host_can_reach(tmp_path):
    seen = _listening_during("qkt_flower.fl.simulation", [*OVERRIDES, f"hydra.run.dir={tmp_path}"])
    assert (tmp_path / "results.json").is_file()
    assert seen == set(), f"listening outside loopback during the simulation: {seen}"


@sampling
def test_flwr_run_on_a_local_superlink_listens_on_nothing_another_host_can_reach(tmp_path):
    """``python -m qkt_flower.fl.launch``: the SuperLink ``flwr run`` starts and its Ray live in the namespace too."""
    seen = _listening_during("qkt_flower.fl.launch", OVERRIDES, cwd=tmp_path)
    assert len(list(tmp_path.glob("outputs/*/*/results.json"))) == 1
    assert seen == set(), f"listening outside loopback during flwr run: {seen}"
