"""The benchmark's measuring helpers, on real processes (the benchmark itself is not a timed test)."""

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from qkt_flower.fl import benchmark

pytestmark = pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="reads /proc (Linux)")
SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "benchmark.py"


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


def test_probe_share_and_qkt_bytes_by_hand():
    """Node seconds over node training seconds plus server seconds over the train step's wall time; QKT's steps only."""
    res = {
        "probe_cost": {"node_seconds_with_training": 0.5, "server_seconds": 0.2},
        "local_training": {"client_seconds": 100.0},
        "seconds": {"train": 20.0},
        "bytes": {"sent": {"train": 10**6, "probe": 30, "weights": 5, "qkt": 400},
                  "received": {"train": 10**6, "probe": 7, "weights": 2000, "baselines.weights": 10**5}},
    }  # fmt: skip
    assert benchmark.flower_probe_share(res) == pytest.approx(0.5 / 100 + 0.2 / 20)
    assert benchmark.qkt_bytes(res) == 30 + 5 + 400 + 7 + 2000


def test_a_failed_scaling_run_is_a_row_and_the_report_marks_it():
    run = {"rc": 137, "wall_s": 12.0, "peak_memory_bytes": 3 * 2**30, "cmd": "x", "results": None}
    row = benchmark.scaling_row(1000, run)
    assert row == {"clients": 1000, "ok": False, "rc": 137, "wall_s": 12.0, "peak_memory_bytes": 3 * 2**30, "cmd": "x"}
    text = benchmark.markdown(None, [row], "a machine")
    line = text.splitlines()[-1]
    assert line.startswith("| 1000 | **no** (exit 137) | 12 | 3.00 |") and line.count("|") == 11


def test_the_script_refuses_bad_counts_in_one_line():
    done = subprocess.run([sys.executable, str(SCRIPT), "--clients", "0", "--skip-default"], capture_output=True,
                          text=True, timeout=120)  # fmt: skip
    assert done.returncode == 2 and done.stderr.strip().startswith("error:") and "Traceback" not in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1
