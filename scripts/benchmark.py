"""Performance benchmark: Flower simulation vs bare PyTorch, probe cost, bytes, and scaling to many clients.

Every measurement runs the real entry points as subprocesses (``qkt-reference`` = the same steps in one
process without Flower, ``qkt-flower`` = the Flower simulation on Ray) on the same machine, in one go:

1. the default experiment both ways: whole wall time (ratio, goal ≤ 1.15), local-training throughput
   (samples/s of step 0: inside Flower = samples / wall time of the train exchange from its first handler
   on, and with the wait before it; bare = the reference runner's loop; ratio, goal ≥ 0.9), probe +
   masking as a share of local training (goal ≤ 1 %; in Flower the answers come with the training
   replies: their node compute over the nodes' training compute, plus the server's probe messages and
   masking over the train exchange's wall time), and the bytes QKT moved vs one FedAvg round over all
   clients (goal ≤ 0.3);
2. scaling: wall time and peak memory (PSS summed over the process tree: driver, Ray and its workers)
   for ``--clients`` simulated clients (small CNN, Fashion-MNIST, ``local.epochs=1``).

    python scripts/benchmark.py                                  # 10, 100, 1000 clients
    python scripts/benchmark.py --clients 10 100 --skip-default  # scaling only

Prints a Markdown table and writes ``benchmark.json`` / ``benchmark.md`` (plus each run's results and log)
under ``--out`` (default ``outputs/benchmark/<date>/<time>``).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import threading
import time
from datetime import datetime
from pathlib import Path

GOALS = {"throughput_ratio": 0.9, "wall_ratio": 1.15, "probe_share": 0.01, "bytes_ratio": 0.3}
SCALING = ["local.epochs=1", "strategy.control=false", "progress=false"]


def _children() -> dict[int, list[int]]:
    """Parent pid -> child pids, from /proc."""
    tree: dict[int, list[int]] = {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/stat") as f:
                ppid = int(f.read().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        tree.setdefault(ppid, []).append(int(entry.name))
    return tree


def _memory_kib(pid: int) -> int:
    """Proportional set size of ``pid`` (shared pages split between their users), else its RSS."""
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
    tree, todo, total = _children(), [root], 0
    while todo:
        pid = todo.pop()
        total += _memory_kib(pid)
        todo.extend(tree.get(pid, []))
    return total * 1024


def run_measured(args: list[str], run_dir: Path, timeout: float) -> dict:
    """Run a Hydra entry point into ``run_dir``; wall time, peak tree memory, exit code, its results."""
    run_dir.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", *args, f"hydra.run.dir={run_dir}"]
    env = {**os.environ, "FLWR_TELEMETRY_ENABLED": "0", "RAY_DEDUP_LOGS": "0"}
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
    results_file = run_dir / "results.json"
    results = None
    if rc == 0 and results_file.is_file():
        from omegaconf import OmegaConf

        results = json.loads(results_file.read_text())
        results["config"] = OmegaConf.to_container(OmegaConf.load(run_dir / "config.yaml"))
    return {"cmd": " ".join(cmd[1:]), "rc": rc, "wall_s": wall, "peak_memory_bytes": peak[0], "results": results}


def _stop_group(pgid: int) -> None:
    """Kill what the run left behind in its process group (Ray daemons normally exit with the driver)."""
    try:
        os.killpg(pgid, 9)
    except ProcessLookupError:
        pass


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

    Answers that come with training cost their nodes' compute (summed over nodes, like the training
    seconds they are compared with); probe messages and masking cost wall time on the server (compared
    with the train exchange's wall time).
    """
    cost, trained = res["probe_cost"], res["local_training"]["client_seconds"]
    return cost["node_seconds_with_training"] / trained + cost["server_seconds"] / res["seconds"]["train"]


def default_experiment(out: Path, extra: list[str], timeout: float) -> dict:
    """The default experiment through the reference runner and through the Flower simulation."""
    overrides = ["progress=false", *extra]
    ref = run_measured(["qkt_flower.reference", *overrides], out / "reference", timeout)
    fl = run_measured(["qkt_flower.fl.simulation", *overrides], out / "flower", timeout)
    if ref["results"] is None or fl["results"] is None:
        failed = [name for name, r in (("reference", ref), ("flower", fl)) if r["results"] is None]
        raise RuntimeError(f"{', '.join(failed)} run failed: see {out}/<run>/log.txt")
    r, f = ref["results"], fl["results"]
    samples = f["local_training"]["samples"]
    bare = samples / r["seconds"]["local_training"]
    step = f["local_training"]
    # like for like: the bare loop is timed without its process start-up, so Flower's train step is timed
    # from its first handler on (the wait before it — Ray's workers starting — is reported on its own)
    startup = step.get("first_handler_after_s", 0.0)
    flower = samples / (f["seconds"]["train"] - startup)
    in_handlers = samples / max(f["local_training"]["client_seconds"], 1e-9)
    clients = f["local_training"]["clients"]
    moved, fedavg = qkt_bytes(f), fedavg_round_bytes(f, clients)
    return {
        "samples": samples,
        "throughput": {
            "bare": bare,
            "flower": flower,
            "ratio": flower / bare,
            "flower_with_startup": samples / f["seconds"]["train"],
            "startup_s": startup,
            "flower_per_loop": in_handlers,
            "flower_train_step": {**f["local_training"], "wall_s": f["seconds"]["train"]},
        },  # fmt: skip
        "wall": {"reference": ref["wall_s"], "flower": fl["wall_s"], "ratio": fl["wall_s"] / ref["wall_s"]},
        "probe_share": {
            "reference": r["seconds"]["probe_and_mask"] / r["seconds"]["local_training"],
            "flower": flower_probe_share(f),
        },
        "bytes": {"qkt": moved, "fedavg_round": fedavg, "ratio": moved / fedavg},
        "peak_memory_bytes": {"reference": ref["peak_memory_bytes"], "flower": fl["peak_memory_bytes"]},
        "accuracy": {
            "reference": r["after"],
            "flower": {k.removeprefix("after."): v for k, v in f["metrics"].items() if k.startswith("after.")},
        },  # fmt: skip
        "runs": {"reference": ref["cmd"], "flower": fl["cmd"]},
    }


def scaling(out: Path, counts: list[int], extra: list[str], timeout: float) -> list[dict]:
    """Wall time and peak memory of the Flower simulation for each client count."""
    rows = []
    for n in counts:
        print(f"scaling: {n} clients ...", flush=True)
        overrides = [f"partition.num_clients={n}", *SCALING, *extra]
        run = run_measured(["qkt_flower.fl.simulation", *overrides], out / f"clients_{n}", timeout)
        res = run["results"]
        row = {"clients": n, "ok": res is not None, "rc": run["rc"], "wall_s": run["wall_s"],
               "peak_memory_bytes": run["peak_memory_bytes"], "cmd": run["cmd"]}  # fmt: skip
        if res is not None:
            row.update({
                "train_s": res["seconds"]["train"], "probe_s": res["probe_cost"]["server_seconds"],
                "probe_node_s": res["probe_cost"]["node_seconds_with_training"],
                "qkt_s": res["seconds"]["qkt"], "experts": len({k for ks in res["experts"].values() for k in ks}),
                "dropped": len(res["dropped"]), "qkt_bytes": qkt_bytes(res),
                "fedavg_round_bytes": fedavg_round_bytes(res, n),
                "query_acc": res["metrics"]["after.query_acc"], "local_acc": res["metrics"]["after.local_acc"],
            })  # fmt: skip
        rows.append(row)
        status = "ok" if row["ok"] else f"FAILED (rc {run['rc']})"
        print(f"  {status}: {run['wall_s']:.0f} s, "
              f"peak {run['peak_memory_bytes'] / 2**30:.2f} GiB", flush=True)  # fmt: skip
        if not row["ok"]:
            break  # larger counts would fail the same way
    return rows


def _check(value: float, goal: float, higher_is_better: bool) -> str:
    return "yes" if (value >= goal if higher_is_better else value <= goal) else "**no**"


def markdown(default: dict | None, rows: list[dict], machine: str) -> str:
    """The report: goals table and scaling table."""
    lines = [f"Machine: {machine}", ""]
    if default:
        t, w, p, b = default["throughput"], default["wall"], default["probe_share"], default["bytes"]
        lines += [
            "| measure | bare PyTorch / reference | Flower simulation | ratio | goal | met |",
            "|---|---|---|---|---|---|",
            f"| local training, samples/s | {t['bare']:.0f} | {t['flower']:.0f} | {t['ratio']:.2f} | ≥ 0.9 | "
            f"{_check(t['ratio'], GOALS['throughput_ratio'], True)} |",
            f"| … counting the {t['startup_s']:.1f} s before the first handler runs | {t['bare']:.0f} | "
            f"{t['flower_with_startup']:.0f} | {t['flower_with_startup'] / t['bare']:.2f} | — | — |",
            f"| default experiment, wall s | {w['reference']:.1f} | {w['flower']:.1f} | {w['ratio']:.2f} | ≤ 1.15 | "
            f"{_check(w['ratio'], GOALS['wall_ratio'], False)} |",
            f"| probe + masking / local training | {100 * p['reference']:.2f} % | {100 * p['flower']:.2f} % | — | "
            f"≤ 1 % | {_check(p['flower'], GOALS['probe_share'], False)} |",
            f"| bytes: QKT / one FedAvg round | — | {b['qkt'] / 1e6:.1f} MB / {b['fedavg_round'] / 1e6:.1f} MB | "
            f"{b['ratio']:.3f} | ≤ 0.3 | {_check(b['ratio'], GOALS['bytes_ratio'], False)} |",
            "",
        ]  # fmt: skip
    if rows:
        lines += ["| clients | completed | wall s | peak memory GiB | train step s | "
                  "probe s: nodes (summed) / server | experts | "
                  "QKT MB | FedAvg round MB | query / local acc % |",
                  "|---|---|---|---|---|---|---|---|---|---|"]  # fmt: skip
        for r in rows:
            if r["ok"]:
                lines.append(
                    f"| {r['clients']} | yes | {r['wall_s']:.0f} | {r['peak_memory_bytes'] / 2**30:.2f} | "
                    f"{r['train_s']:.0f} | {r['probe_node_s']:.1f} / {r['probe_s']:.1f} | {r['experts']} | "
                    f"{r['qkt_bytes'] / 1e6:.1f} | "
                    f"{r['fedavg_round_bytes'] / 1e6:.0f} | {100 * r['query_acc']:.1f} / {100 * r['local_acc']:.1f} |"
                )
            else:
                lines.append(f"| {r['clients']} | **no** (exit {r['rc']}) | {r['wall_s']:.0f} | "
                             f"{r['peak_memory_bytes'] / 2**30:.2f} | | | | | | |")  # fmt: skip
    return "\n".join(lines)


def machine() -> str:
    """CPU count, memory and accelerator, in words."""
    import torch

    mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
    return f"{os.cpu_count()} CPU cores, {mem:.0f} GiB memory, {gpu}, torch {torch.__version__}"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clients", type=int, nargs="*", default=[10, 100, 1000], help="scaling counts")
    parser.add_argument("--skip-default", action="store_true", help="skip the default-experiment comparison")
    parser.add_argument("--extra", nargs="*", default=[], help="Hydra overrides for every run")
    parser.add_argument("--timeout", type=float, default=3600.0, help="seconds per run before it is killed")
    parser.add_argument("--out", type=Path, help="default: outputs/benchmark/<date>/<time>")
    args = parser.parse_args(argv)
    out = args.out or Path("outputs/benchmark") / f"{datetime.now():%Y-%m-%d/%H-%M-%S}"
    out.mkdir(parents=True, exist_ok=True)
    default = None
    if not args.skip_default:
        print("default experiment: reference runner, then Flower simulation ...", flush=True)
        try:
            default = default_experiment(out, args.extra, args.timeout)
        except RuntimeError as err:
            print(f"error: {err}", file=sys.stderr)
            sys.exit(1)
    rows = scaling(out, args.clients, args.extra, args.timeout)
    text = markdown(default, rows, machine())
    print(text)
    (out / "benchmark.md").write_text(text + "\n")
    (out / "benchmark.json").write_text(json.dumps({"machine": machine(), "default": default, "scaling": rows,
                                                    "goals": GOALS, "argv": sys.argv}, indent=1))  # fmt: skip
    print(f"written: {out}/benchmark.md, benchmark.json")


if __name__ == "__main__":
    main()
