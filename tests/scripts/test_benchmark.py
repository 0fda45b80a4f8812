"""The benchmark's measuring helpers, on real processes (the benchmark itself is not a timed test)."""

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "scripts"))
import benchmark  # noqa: E402

pytestmark = pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="reads /proc (Linux)")


def test_tree_memory_counts_descendants():
    """A child holding 200 MB raises the tree's memory by about that much; the parent alone does not."""
    alone = benchmark.tree_memory_bytes(os.getpid())
    code = (
        "import time; b = bytearray(200 * 2**20); b[::4096] = b'x' * len(b[::4096]); "
        "print(1, flush=True); time.sleep(30)"
    )
    child = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE)
    try:
        child.stdout.readline()  # the buffer is touched
        with_child = benchmark.tree_memory_bytes(os.getpid())
        assert with_child - alone > 150 * 2**20
        assert benchmark.tree_memory_bytes(child.pid) > 150 * 2**20
    finally:
        child.kill()
        child.wait()


def test_run_measured_reports_failure_and_peak(tmp_path):
    """A failing entry point comes back with its exit code and no results, and its log is kept."""
    start = time.perf_counter()
    run = benchmark.run_measured(["qkt_flower.reference", "dataset=nope"], tmp_path / "bad", timeout=120)
    assert run["rc"] != 0 and run["results"] is None
    assert "dataset" in (tmp_path / "bad" / "log.txt").read_text()
    assert 0 < run["wall_s"] <= time.perf_counter() - start
