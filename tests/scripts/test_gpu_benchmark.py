"""``scripts/gpu_benchmark.py``: refuses what it cannot run on one line, and runs end to end on CPU (smoke check)."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

SCRIPT = str(Path(__file__).resolve().parents[2] / "scripts" / "gpu_benchmark.py")


def _run(*args: str, cwd=None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, SCRIPT, *args], capture_output=True, text=True, cwd=cwd, timeout=1200)


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU")
def test_no_gpu_bad_device_or_fraction_is_one_line(tmp_path):
    for args, text in ((["--out", str(tmp_path)], "no CUDA GPU"), (["--device", "tpu"], "cuda, cuda:N or cpu"),
                       (["--device", "cpu", "--fractions", "0"], "--fractions")):  # fmt: skip
        proc = _run(*args)
        assert proc.returncode == 2 and text in proc.stderr and "Traceback" not in proc.stderr
        assert len(proc.stderr.strip().splitlines()) == 1
    assert not any(tmp_path.iterdir())  # refused before anything ran


@pytest.mark.slow
@pytest.mark.skipif(not Path("/usr/share/datasets/fashion-mnist").is_dir(), reason="needs Fashion-MNIST")
def test_smoke_on_cpu(tmp_path):
    tiny = ["dataset.train_per_class=50", "dataset.test_per_class=20", "partition.num_clients=3", "local.epochs=1"]
    proc = _run("--device", "cpu", "--fractions", "1", "--extra", *tiny, "--out", str(tmp_path / "out"))
    assert proc.returncode == 0, proc.stderr[-2000:]
    record = json.loads((tmp_path / "out" / "gpu_benchmark.json").read_text())
    (row,) = record["throughput"]
    assert row["rc"] == 0 and row["num_gpus"] == 0.0 and row["flower_samples_s"] > 0 and row["bare_samples_s"] > 0
    assert row["query_acc"] == pytest.approx(row["bare_query_acc"], abs=1e-6)  # the same run both ways
    assert "skipped" in record["paper_cifar10"]  # no --cifar-root given
    assert "| default experiment |" in (tmp_path / "out" / "gpu_benchmark.md").read_text()
