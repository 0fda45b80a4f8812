"""Importing qkt_flower keeps freed memory in the process, unless the user tuned glibc's allocator themselves."""

from __future__ import annotations

import os
import platform
import subprocess
import sys

import pytest

from qkt_flower import keep_freed_memory

GLIBC = platform.system() == "Linux" and platform.libc_ver()[0] == "glibc"


def test_the_users_own_allocator_settings_win(monkeypatch):
    monkeypatch.setenv("MALLOC_MMAP_THRESHOLD_", "131072")
    assert keep_freed_memory() is False


@pytest.mark.skipif(not GLIBC, reason="mallopt is glibc's")
def test_a_training_step_maps_no_fresh_pages_once_warm():
    """Page faults of 20 training steps after 5 warm-up steps: few with its thresholds, 10x more with glibc's initial
    128 KiB ones (set through the environment, which also makes the import leave them alone)."""
    code = """
import resource, torch
import qkt_flower
from qkt_flower.models import build_model
model = build_model("cnn", (1, 28, 28), 10, seed=0)
opt = torch.optim.Adam(model.parameters())
x, y = torch.randn(64, 1, 28, 28), torch.randint(0, 10, (64,))
def step():
    opt.zero_grad(); torch.nn.functional.cross_entropy(model(x), y).backward(); opt.step()
for _ in range(5): step()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(20): step()
print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""

    def faults(env: dict) -> int:
        run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, env=env)
        assert run.returncode == 0, run.stderr[-2000:]
        return int(run.stdout.split()[-1])

    base = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_")}
    kept = faults(base)
    default = faults({**base, "MALLOC_MMAP_THRESHOLD_": "131072", "MALLOC_TRIM_THRESHOLD_": "131072"})
    assert kept * 10 < default, (kept, default)
