"""Stop a process and everything it started, so that nothing outlives a script or a test.

Flower's daemons start helpers of their own (a SuperLink starts ``flower-superexec`` in a new process
group, a SuperNode one ``flwr-clientapp`` per message), so stopping the pid we started is not enough:
:func:`stop_trees` signals the whole tree of descendants, found through ``/proc`` before any of them dies.
Both the simulation launcher (:mod:`qkt_flower.fl.launch`) and the deployment (:mod:`qkt_flower.deploy`) use it.
"""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Iterable
from pathlib import Path


def alive(pid: int) -> bool:
    """Whether ``pid`` runs (a zombie has exited)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def send(pid: int, sig: int) -> None:
    """``os.kill`` that ignores a process already gone."""
    try:
        os.kill(pid, sig)
    except ProcessLookupError:
        pass


def descendants(pid: int) -> list[int]:
    """Every live descendant of ``pid`` (children first found, deepest last)."""
    children: dict[int, list[int]] = {}
    for proc in Path("/proc").glob("[0-9]*"):
        try:
            ppid = int(proc.joinpath("stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            continue
        children.setdefault(ppid, []).append(int(proc.name))
    out, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            out.append(child)
            todo.append(child)
    return out


def stop_trees(pids: Iterable[int], grace: float = 10.0, sig: int = signal.SIGTERM) -> None:
    """Signal every process in ``pids`` and all their descendants at once (``sig``, then SIGKILL after ``grace`` s).

    All trees share one grace period: stopping N SuperNodes costs at most ``grace``, not N times it.
    Returns once every process of the trees has exited (waiting at most 10 s after the SIGKILL).
    """
    every = []
    for pid in pids:
        every += [pid, *descendants(pid)]
    for p in every:
        send(p, sig)
    deadline = time.monotonic() + grace
    while any(alive(p) for p in every) and time.monotonic() < deadline:
        time.sleep(0.1)
    for p in every:
        if alive(p):
            send(p, signal.SIGKILL)
    # SIGKILL is delivered asynchronously: on a loaded machine the processes take a moment to end.
    deadline = time.monotonic() + 10.0
    while any(alive(p) for p in every) and time.monotonic() < deadline:
        time.sleep(0.05)
