"""The performance benchmark: the Flower simulation against the same steps without Flower, on real processes.

Every measurement runs an entry point as a subprocess (``qkt_flower.reference`` = the steps in one process without
Flower, ``qkt_flower.fl.simulation`` = the Flower simulation on Ray) on the same machine, so the numbers include
what a user pays: process start-up, Ray's workers, serialisation. Memory is the proportional set size summed over
the process tree (driver, Ray and its workers), sampled while the run lasts: Ray's daemons are descendants of the
driver, and shared pages count once. What the runs measure (throughput, probe share, bytes) comes from their
``results.json``.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

from qkt_flower.fl.processes import descendants
from qkt_flower.results import load_results

GOALS = {"throughput_ratio": 0.9, "wall_ratio": 1.15, "probe_share": 0.01, "bytes_ratio": 0.3}
"""Flower's local-training throughput ≥ 0.9 × bare PyTorch, whole wall time ≤ 1.15 ×, probe + masking ≤ 1 % of
local training, QKT's bytes ≤ 0.3 × one FedAvg round."""
SCALING = ["local.epochs=1", "control=false", "progress=false", "query.min_local_count=1"]
"""Overrides of the scaling runs: one local epoch and no control, so many clients stay affordable; at 3,000+
clients a client holds 2-7 images per class, so any class it holds counts as local (the default asks for 20)."""
CAP_FROM, CAP = 10_000, "strategy.mask.max_experts=300"
"""From 10,000 clients on, a scaling run keeps the 300 best experts (unless ``--extra`` sets ``max_experts``): the
mask names ~37 % of the teachers, and 3,684 experts' weights need ~27 GiB on the querying node and the server."""


def memory_kib(pid: int) -> int:
    """Proportional set size of ``pid`` (shared pages split between their users), else its RSS; 0 once gone."""
    for path, key in ((f"/proc/{pid}/smaps_rollup", "Pss:"), (f"/proc/{pid}/status", "VmRSS:")):
        try:
            with open(path) as f:
                for line in f:
                    if line.startswith(key):
                        return int(line.split()[1])
        except OSError:
            continue
    return 0


def tree_memory_bytes(root: int) -> int:
    """Memory of ``root`` and every descendant (Ray's raylet, GCS and workers are descendants of the driver)."""
    return 1024 * sum(memory_kib(pid) for pid in (root, *descendants(root)))


def _stop_group(pgid: int) -> None:
    """Kill what the run left behind in its process group (Ray daemons normally exit with the driver)."""
    try:
        os.killpg(pgid, 9)
    except ProcessLookupError:
        pass


def run_measured(args: list[str], run_dir: Path, timeout: float) -> dict:
    """Run a Hydra entry point (``python -m args...``) into ``run_dir``: wall time, peak tree memory, exit code.

    ``results`` is the run's ``results.json`` with its resolved ``config.yaml`` under ``config`` (``None`` when
    the run failed). The output goes to ``run_dir/log.txt``; a run past ``timeout`` seconds is killed.
    """
    run_dir.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", *args, f"hydra.run.dir={run_dir}"]
    # every run trains its local models: a cache folder of its own (emptied afterwards), not the user's
    env = {**os.environ, "FLWR_TELEMETRY_ENABLED": "0", "RAY_DEDUP_LOGS": "0", "XDG_CACHE_HOME": str(run_dir / "cache")}
    peak, done = [0], threading.Event()
    start = time.perf_counter()
    with open(run_dir / "log.txt", "w") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)

        def watch() -> None:
            while not done.wait(0.5):
                peak[0] = max(peak[0], tree_memory_bytes(proc.pid))

        watcher = threading.Thread(target=watch, daemon=True)
        watcher.start()
        try:
            rc = proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, 9)
            rc = proc.wait()
        finally:
            done.set()
            watcher.join()
            _stop_group(proc.pid)
    wall = time.perf_counter() - start
    shutil.rmtree(run_dir / "cache", ignore_errors=True)
    results = None
    if rc == 0 and (run_dir / "results.json").is_file():
        from omegaconf import OmegaConf

        results = load_results(run_dir)
        results["config"] = OmegaConf.to_container(OmegaConf.load(run_dir / "config.yaml"))
    return {"cmd": " ".join(cmd[1:]), "rc": rc, "wall_s": wall, "peak_memory_bytes": peak[0], "results": results}


def qkt_bytes(res: dict) -> int:
    """Bytes of QKT's own exchanges (probe, expert weights, query learning), both directions."""
    b = res["bytes"]
    return sum(b[d].get(s, 0) for d in ("sent", "received") for s in ("probe", "weights", "qkt"))


def fedavg_round_bytes(res: dict, clients: int) -> int:
    """Bytes of one FedAvg round over ``clients``: the model's weights down to and up from every client."""
    from flwr.app import ArrayRecord, RecordDict

    from qkt_flower.fl.records import payload_bytes
    from qkt_flower.models import build_model

    model = build_model(res["config"]["model"]["name"], tuple(res["input_shape"]), res["num_classes"], seed=0)
    return 2 * clients * payload_bytes(RecordDict({"arrays": ArrayRecord(model.state_dict())}))


def flower_probe_share(res: dict) -> float:
    """Probe + masking over local training in the Flower run.

    Answers that come with training cost their nodes' compute (summed over nodes, like the training seconds
    they are compared with); probe messages and masking cost wall time on the server (compared with the train
    exchange's wall time).
    """
    cost, trained = res["probe_cost"], res["local_training"]["client_seconds"]
    return cost["node_seconds_with_training"] / trained + cost["server_seconds"] / res["seconds"]["train"]


def compare(ref: dict, fl: dict) -> dict:
    """The goals' numbers from a reference run and a Flower run of the same experiment (:func:`run_measured`)."""
    r, f = ref["results"], fl["results"]
    step = f["local_training"]
    samples = step["samples"]
    bare = samples / r["seconds"]["local_training"]
    # like for like: the bare loop is timed without its process start-up, so Flower's train step is timed from its
    # first handler on (the wait before it — Ray's workers starting — is reported on its own)
    startup = step.get("first_handler_after_s", 0.0)
    flower = samples / (f["seconds"]["train"] - startup)
    moved, fedavg = qkt_bytes(f), fedavg_round_bytes(f, step["clients"])
    return {
        "samples": samples,
        "throughput": {
            "bare": bare, "flower": flower, "ratio": flower / bare,
            "flower_with_startup": samples / f["seconds"]["train"], "startup_s": startup,
            "flower_per_loop": samples / max(step["client_seconds"], 1e-9),
            "flower_train_step": {**step, "wall_s": f["seconds"]["train"]},
        },
        "wall": {"reference": ref["wall_s"], "flower": fl["wall_s"], "ratio": fl["wall_s"] / ref["wall_s"]},
        "probe_share": {"reference": r["seconds"]["probe_and_mask"] / r["seconds"]["local_training"],
                        "flower": flower_probe_share(f)},
        "bytes": {"qkt": moved, "fedavg_round": fedavg, "ratio": moved / fedavg},
        "peak_memory_bytes": {"reference": ref["peak_memory_bytes"], "flower": fl["peak_memory_bytes"]},
        "accuracy": {"reference": r["after"], "flower": f["after"]},
        "runs": {"reference": ref["cmd"], "flower": fl["cmd"]},
    }  # fmt: skip


def default_experiment(out: Path, extra: list[str], timeout: float) -> dict:
    """The default experiment through the reference runner and through the Flower simulation: :func:`compare`."""
    overrides = ["progress=false", *extra]
    ref = run_measured(["qkt_flower.reference", *overrides], out / "reference", timeout)
    fl = run_measured(["qkt_flower.fl.simulation", *overrides], out / "flower", timeout)
    failed = [name for name, r in (("reference", ref), ("flower", fl)) if r["results"] is None]
    if failed:
        raise RuntimeError(f"{', '.join(failed)} run failed: see {out}/<run>/log.txt")
    return compare(ref, fl)


def scaling_row(clients: int, run: dict) -> dict:
    """One scaling run (:func:`run_measured` of ``clients`` simulated clients) as a table row."""
    res = run["results"]
    row = {"clients": clients, "ok": res is not None, "rc": run["rc"], "wall_s": run["wall_s"],
           "peak_memory_bytes": run["peak_memory_bytes"], "cmd": run["cmd"]}  # fmt: skip
    if res is not None:
        row.update({
            "train_s": res["seconds"]["train"], "probe_s": res["probe_cost"]["server_seconds"],
            "probe_node_s": res["probe_cost"]["node_seconds_with_training"],
            "qkt_s": res["seconds"]["qkt"], "experts": len({k for ks in res["experts"].values() for k in ks}),
            "dropped": len(res["dropped"]), "qkt_bytes": qkt_bytes(res),
            "fedavg_round_bytes": fedavg_round_bytes(res, clients),
            "query_acc": res["after"]["query_acc"], "local_acc": res["after"]["local_acc"],
        })  # fmt: skip
    return row


def scaling(out: Path, counts: list[int], extra: list[str], timeout: float) -> list[dict]:
    """Wall time and peak memory of the Flower simulation for each client count (stops at the first failure)."""
    rows = []
    for n in counts:
        print(f"scaling: {n} clients ...", flush=True)
        capped = [CAP] if n >= CAP_FROM and not any(e.startswith("strategy.mask.max_experts=") for e in extra) else []
        overrides = [f"partition.num_clients={n}", *SCALING, *capped, *extra]
        rows.append(scaling_row(n, run_measured(["qkt_flower.fl.simulation", *overrides], out / f"clients_{n}",
                                                timeout)))  # fmt: skip
        row = rows[-1]
        status = "ok" if row["ok"] else f"FAILED (rc {row['rc']})"
        print(f"  {status}: {row['wall_s']:.0f} s, peak {row['peak_memory_bytes'] / 2**30:.2f} GiB", flush=True)
        if not row["ok"]:
            break  # larger counts would fail the same way
    return rows


def machine() -> str:
    """CPU count, memory and accelerator, in words."""
    import torch

    mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
    return f"{os.cpu_count()} CPU cores, {mem:.0f} GiB memory, {gpu}, torch {torch.__version__}"


def _met(value: float, goal: float, higher_is_better: bool) -> str:
    return "yes" if (value >= goal if higher_is_better else value <= goal) else "**no**"


def markdown(default: dict | None, rows: list[dict], machine: str) -> str:
    """The report: the goals table (from :func:`compare`) and the scaling table (:func:`scaling_row` rows)."""
    lines = [f"Machine: {machine}", ""]
    if default:
        t, w, p, b = default["throughput"], default["wall"], default["probe_share"], default["bytes"]
        lines += [
            "| measure | bare PyTorch / reference | Flower simulation | ratio | goal | met |",
            "|---|---|---|---|---|---|",
            f"| local training, samples/s | {t['bare']:.0f} | {t['flower']:.0f} | {t['ratio']:.2f} | ≥ 0.9 | "
            f"{_met(t['ratio'], GOALS['throughput_ratio'], True)} |",
            f"| … counting the {t['startup_s']:.1f} s before the first handler runs | {t['bare']:.0f} | "
            f"{t['flower_with_startup']:.0f} | {t['flower_with_startup'] / t['bare']:.2f} | — | — |",
            f"| default experiment, wall s | {w['reference']:.1f} | {w['flower']:.1f} | {w['ratio']:.2f} | ≤ 1.15 | "
            f"{_met(w['ratio'], GOALS['wall_ratio'], False)} |",
            f"| probe + masking / local training | {100 * p['reference']:.2f} % | {100 * p['flower']:.2f} % | — | "
            f"≤ 1 % | {_met(p['flower'], GOALS['probe_share'], False)} |",
            f"| bytes: QKT / one FedAvg round | — | {b['qkt'] / 1e6:.1f} MB / {b['fedavg_round'] / 1e6:.1f} MB | "
            f"{b['ratio']:.3f} | ≤ 0.3 | {_met(b['ratio'], GOALS['bytes_ratio'], False)} |",
            "",
        ]  # fmt: skip
    if rows:
        lines += ["| clients | completed | wall s | peak memory GiB | train step s | probe s: nodes (summed) / server "
                  "| experts | QKT MB | FedAvg round MB | query / local acc % |",
                  "|---|---|---|---|---|---|---|---|---|---|"]  # fmt: skip
        for r in rows:
            done = "yes" if r["ok"] else f"**no** (exit {r['rc']})"
            head = f"| {r['clients']} | {done} | {r['wall_s']:.0f} | {r['peak_memory_bytes'] / 2**30:.2f} |"
            if not r["ok"]:
                lines.append(head + " | | | | | |")
                continue
            lines.append(head + f" {r['train_s']:.0f} | {r['probe_node_s']:.1f} / {r['probe_s']:.1f} | "
                         f"{r['experts']} | {r['qkt_bytes'] / 1e6:.1f} | {r['fedavg_round_bytes'] / 1e6:.0f} | "
                         f"{100 * r['query_acc']:.1f} / {100 * r['local_acc']:.1f} |")  # fmt: skip
    return "\n".join(lines)
