"""Run a simulation in a network namespace of its own, so that nothing it opens is reachable from another host.

Ray (2.55) binds its GCS, raylets and workers to every interface whatever node address it is given (measured with
``ss -ltnp``: ``*:<port>`` for each, the runtime-env agent on the host's address). In a fresh network namespace the
only interface is loopback, so every one of those sockets lives there and no other host — nor another namespace of
this one — can connect to them. ``qkt-flower`` and ``python -m qkt_flower.fl.launch`` (``flwr run`` on a local
SuperLink, whose ports then live there too) re-run themselves under ``unshare --user --map-root-user --net``
(Linux, unprivileged user namespaces) when ``simulation.network`` is ``isolated``, or ``auto`` and the host allows it.
"""

from __future__ import annotations

import fcntl
import functools
import logging
import os
import shutil
import socket
import struct
import subprocess
import sys

from qkt_flower.errors import ConfigError

log = logging.getLogger(__name__)

ENV = "QKT_NETWORK_ISOLATED"  # set in the re-run process: it is inside the namespace
UNSHARE = ("unshare", "--user", "--map-root-user", "--net", "--")


@functools.cache
def available() -> bool:
    """Whether this host lets an unprivileged process make a user + network namespace (``unshare`` works)."""
    if shutil.which("unshare") is None:
        return False
    try:
        return subprocess.run([*UNSHARE, "true"], capture_output=True, timeout=30).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


def inside() -> bool:
    """Whether this process is the re-run inside the namespace."""
    return os.environ.get(ENV) == "1"


def loopback_up() -> None:
    """Bring up ``lo`` in this (fresh) namespace, where it starts down: Ray's processes talk over it."""
    siocgifflags, siocsifflags, iff_up = 0x8913, 0x8914, 0x1
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        request = struct.pack("16sH", b"lo", 0)
        flags = struct.unpack("16sH", fcntl.ioctl(s, siocgifflags, request)[:18])[1]
        fcntl.ioctl(s, siocsifflags, struct.pack("16sH", b"lo", flags | iff_up))


def rerun(module: str, args: list[str]) -> int:
    """``python -m module args`` inside a new user + network namespace; its exit code."""
    env = {**os.environ, ENV: "1"}
    return subprocess.run([*UNSHARE, sys.executable, "-m", module, *args], env=env).returncode


def wanted(network: str) -> bool:
    """Whether to re-run in a network namespace (``simulation.network``).

    ``isolated`` where none can be made is refused; ``auto`` goes on with a warning.
    """
    if network == "host" or inside():
        return False
    if available():
        return True
    if network == "isolated":
        why = "no unprivileged network namespace (unshare --user --net) here: Ray's servers would listen everywhere"
        raise ConfigError("simulation.network", network, f"auto or host ({why})")
    log.warning("no network namespace on this host: Ray's servers listen on every interface during the simulation")
    return False
