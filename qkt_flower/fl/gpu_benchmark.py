"""The benchmark's GPU rows, in one command that fits ten minutes of a lent GPU.

1. Local-training throughput of the default experiment in the Flower simulation against the reference runner's
   bare loop (both under ``amp=auto``: bfloat16 autocast on CUDA), goal ≥ 0.9 ×;
2. the same simulation with fractional GPUs per client (``simulation.num_gpus`` 1, 0.5, 0.25: 1, 2, 4 clients
   sharing the GPU);
3. the CIFAR-10 paper preset (``+paper=cifar10``: ResNet-18, the colour recipe, the one-round baselines) through the
   reference runner: its wall time on the data given (the subset where only the subset exists — say so).

Each run is a real entry point in a subprocess (:func:`qkt_flower.fl.benchmark.run_measured`); a run that fails
or passes its timeout is a row with its exit code, and the rest still run. ``device=cpu`` (fractions then mean
nothing: every client gets ``num_gpus=0``) is the smoke check that the command works end to end.
"""

from __future__ import annotations

import time
from pathlib import Path

from qkt_flower.fl.benchmark import compare, machine, run_measured

FRACTIONS = (1.0, 0.5, 0.25)
GOAL = 0.9  # Flower's local-training samples/s over the bare loop's


def throughput_rows(out: Path, device: str, fractions, extra: list[str], timeout: float) -> tuple[dict, list[dict]]:
    """The bare loop (reference runner), then the simulation at each GPU fraction: one row per fraction."""
    common = [f"device={device}", "amp=auto", "progress=false", "checkpoint_dir=null", *extra]
    ref = run_measured(["qkt_flower.reference", *common], out / "reference", timeout)
    rows = []
    for fraction in fractions:
        gpus = fraction if device != "cpu" else 0.0
        run = run_measured(["qkt_flower.fl.simulation", *common, f"simulation.num_gpus={gpus}"],
                           out / f"flower_gpu_{fraction}", timeout)  # fmt: skip
        row = {"fraction": fraction, "num_gpus": gpus, "rc": run["rc"], "wall_s": run["wall_s"], "cmd": run["cmd"]}
        if ref["results"] is not None and run["results"] is not None:
            c = compare(ref, run)
            t = c["throughput"]
            row.update({"bare_samples_s": t["bare"], "flower_samples_s": t["flower"], "ratio": t["ratio"],
                        "startup_s": t["startup_s"], "query_acc": run["results"]["after"]["query_acc"],
                        "bare_query_acc": ref["results"]["after"]["query_acc"]})  # fmt: skip
        rows.append(row)
    return {"rc": ref["rc"], "wall_s": ref["wall_s"], "cmd": ref["cmd"]}, rows


def paper_preset_row(out: Path, device: str, cifar_root: str | None, extra: list[str], timeout: float) -> dict:
    """The CIFAR-10 paper preset through the reference runner: wall time, peak memory, accuracies."""
    if cifar_root is None:
        return {"skipped": "no --cifar-root (a folder holding cifar-10-batches-py)"}
    args = ["qkt_flower.reference", "+paper=cifar10", f"dataset.root={cifar_root}", "dataset.download=false",
            f"device={device}", "progress=false", "checkpoint_dir=null", *extra]  # fmt: skip
    run = run_measured(args, out / "paper_cifar10", timeout)
    row = {"rc": run["rc"], "wall_s": run["wall_s"], "peak_memory_bytes": run["peak_memory_bytes"], "cmd": run["cmd"]}
    if run["results"] is not None:
        r = run["results"]
        row.update({"train_images": sum(sum(c) for c in r["class_counts"].values()),
                    "local_training_s": r["seconds"]["local_training"],
                    "query_acc": r["after"]["query_acc"], "local_acc": r["after"]["local_acc"]})  # fmt: skip
    return row


def run_all(out: Path, device: str, fractions, cifar_root: str | None, extra: list[str], paper_extra: list[str],
            timeout: float) -> dict:  # fmt: skip
    """Every GPU row; the record written as ``gpu_benchmark.json``."""
    start = time.perf_counter()
    reference, rows = throughput_rows(out, device, fractions, extra, timeout)
    paper = paper_preset_row(out, device, cifar_root, paper_extra, timeout)
    return {"machine": machine(), "device": device, "goal_ratio": GOAL, "reference": reference, "throughput": rows,
            "paper_cifar10": paper, "wall_s": time.perf_counter() - start}  # fmt: skip


def markdown(record: dict) -> str:
    """The rows as a Markdown table."""
    lines = [f"GPU benchmark on {record['machine']} (device={record['device']}), {record['wall_s']:.0f} s", "",
             "| run | GPU per client | bare samples/s | Flower samples/s | ratio (goal ≥ 0.9) | wall s | rc |",
             "|---|---|---|---|---|---|---|"]  # fmt: skip
    for r in record["throughput"]:
        if "ratio" in r:
            cells = f"{r['bare_samples_s']:.0f} | {r['flower_samples_s']:.0f} | {r['ratio']:.2f}"
        else:
            cells = "— | — | —"
        lines.append(f"| default experiment | {r['num_gpus']} | {cells} | {r['wall_s']:.0f} | {r['rc']} |")
    p = record["paper_cifar10"]
    if "skipped" in p:
        lines.append(f"| CIFAR-10 paper preset | — | skipped: {p['skipped']} | | | | |")
    else:
        acc = f"query {100 * p['query_acc']:.1f} %, local {100 * p['local_acc']:.1f} %" if "query_acc" in p else "—"
        name = f"CIFAR-10 paper preset, {p.get('train_images', '?')} train images"
        lines.append(f"| {name} | 1 | {acc} | | | {p['wall_s']:.0f} | {p['rc']} |")
    return "\n".join(lines)
