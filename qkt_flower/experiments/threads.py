"""How many CPU threads torch uses, step by step: a client's own training on one, the querying node's steps on all.

A client's training (step 0, a FedAvg / FedProx round) is the same bits in every runtime only if it runs on the same
number of threads everywhere: on some CPUs oneDNN splits a convolution's weight-gradient sum across threads, and a
model trained on two threads differs in the last bits from one trained on one — and then, after enough steps, in
its predictions. Ray gives each simulated node one CPU (so torch uses one thread there), so a client trains on one
thread in every runtime (:func:`one_thread`), and the in-process runner trains several clients side by side, one
per core (:func:`in_parallel`): the same models as the simulation's, and faster than one client on every core.
The steps only the querying node runs (query learning, baselines, evaluations) use every core (:func:`every_core`).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager, nullcontext
from typing import TypeVar

import torch

T = TypeVar("T")
R = TypeVar("R")


def usable_cores() -> int:
    """The cores this process may run on."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


@contextmanager
def _torch_threads(count: int) -> Iterator[None]:
    """Run torch on ``count`` CPU threads inside the block; the calling thread's own count is restored after."""
    before = torch.get_num_threads()
    torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(before)


@contextmanager
def every_core() -> Iterator[None]:
    """Let torch use every core this process may run on, for a step that only one node runs.

    A context manager, or a decorator (``@every_core()``) for a whole handler. Ray gives each simulated node
    one CPU (so that nodes train in parallel) and torch then uses one thread; the query phases, the baselines
    and the evaluations run on the querying node alone, and would leave the other cores idle.
    """
    with _torch_threads(max(usable_cores(), torch.get_num_threads())):  # counted on entry, call by call
        yield


@contextmanager
def one_thread(device: torch.device | str = "cpu") -> Iterator[None]:
    """Run torch on one CPU thread inside this block, in the calling Python thread (nothing for a GPU ``device``).

    The setting is the calling thread's own (OpenMP's and MKL's thread counts are per thread; a thread that never
    set one takes the last value any thread set, at its first parallel operation), so each thread of
    :func:`in_parallel` sets and restores its own, and a neighbour that leaves first changes nothing for the rest.
    """
    with _torch_threads(1) if torch.device(device).type == "cpu" else nullcontext():
        yield


def in_parallel(fn: Callable[[T], R], items: Iterable[T], device: torch.device) -> list[R]:
    """``[fn(x) for x in items]``, on CPU with one Python thread per core torch may use (it releases the GIL).

    In order, exceptions raised as in the loop. ``fn`` must not touch the global RNG while another runs (model
    construction is locked in :func:`qkt_flower.models.build_model`). The caller's thread count is read before
    (a thread takes the last count set anywhere at its first parallel operation) and set again after.
    """
    items = list(items)
    before = torch.get_num_threads()
    cpu = torch.device(device).type == "cpu"
    workers = min(usable_cores(), before, len(items)) if cpu else 1  # OMP_NUM_THREADS=1: one at a time
    if workers <= 1:
        return [fn(x) for x in items]
    try:
        with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="client") as pool:
            return list(pool.map(fn, items))
    finally:
        torch.set_num_threads(before)
