"""Results on disk: ``results.json`` and the resolved ``config.yaml`` side by side in the run folder.

Both runtimes write one shape (``docs/RESULTS.md``, "results.json"): every evaluated model is a top-level
object — ``before`` (the querying client's local model), ``after`` (the method), ``control``, each baseline —
holding :data:`ACCURACIES` and ``per_class_acc`` on the querying client's test view. :func:`load_results` reads it.
"""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from qkt_flower.errors import ConfigError

ACCURACIES = ("query_acc", "local_acc", "overall_acc", "mean_acc")
"""The accuracies of every evaluation object (fractions in [0, 1])."""


def nest_metrics(metrics: dict) -> dict[str, dict]:
    """Flat ``{"after.query_acc": v, "after.per_class_acc.3": v}`` (a Flower ``MetricRecord``) as evaluation objects."""
    out: dict[str, dict] = {}
    for key, value in metrics.items():
        name, _, rest = key.partition(".")
        if rest in ACCURACIES:
            out.setdefault(name, {})[rest] = value
        elif rest.startswith("per_class_acc."):
            out.setdefault(name, {}).setdefault("per_class_acc", {})[rest.removeprefix("per_class_acc.")] = value
    return out


def _clean(value: Any) -> Any:
    """JSON-safe copy: tensors to lists, NaN to None, tuple keys/values to lists."""
    if hasattr(value, "tolist"):
        value = value.tolist()
    if isinstance(value, dict):
        return {str(k): _clean(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_clean(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def check_writable(out_dir: str | Path, overwrite: bool) -> None:
    """Refuse (:class:`~qkt_flower.errors.ConfigError` on ``overwrite``) a folder holding an earlier run's results."""
    path = Path(out_dir) / "results.json"
    if path.exists() and not overwrite:
        raise ConfigError("overwrite", False, f"false while {path} holds an earlier run's results: "
                          "choose another output folder (hydra.run.dir=...) or set overwrite=true")  # fmt: skip


def save_results(out_dir: str | Path, results: dict, cfg: DictConfig | None = None, overwrite: bool = False) -> Path:
    """Write ``results.json`` (and ``config.yaml``, resolved, when ``cfg`` is given); returns the JSON path.

    An existing ``results.json`` is replaced only with ``overwrite`` (:func:`check_writable`).
    """
    check_writable(out_dir, overwrite)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    path = out / "results.json"
    path.write_text(json.dumps(_clean(results), indent=2))
    if cfg is not None:
        (out / "config.yaml").write_text(OmegaConf.to_yaml(cfg, resolve=True))
    return path


def write_csv(path: str | Path, rows: list[dict]) -> None:
    """``rows`` (dicts with the same keys, in the first row's order) as a CSV file with a header."""
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)


def load_results(path: str | Path) -> dict:
    """Read a ``results.json`` (or the one inside a run folder).

    It must hold ``before`` and ``after`` (in a run with several querying clients, at least one querier's: one whose
    query step failed is kept in the file and left out by :func:`per_querier`).
    """
    path = Path(path)
    path = path / "results.json" if path.is_dir() else path
    results = json.loads(path.read_text())
    several = isinstance(results, dict) and isinstance(results.get("queriers"), dict)
    parts = list(results["queriers"].values()) if several else [results]
    if not any(isinstance(r, dict) and all(isinstance(r.get(k), dict) for k in ("before", "after")) for r in parts):
        raise ValueError(f"{path} is not a qkt-flower results.json (no 'before' / 'after' evaluations)")
    return results


def per_querier(results: dict) -> list[dict]:
    """A run's results per querying client, each in the shape of a run with one.

    Each querier's fields over the shared ones, its ``bytes`` / ``seconds`` added to the shared steps' (train,
    probe, total); a querier whose query step failed (no evaluations) is left out.
    """
    if "queriers" not in results:
        return [results]
    shared = {k: v for k, v in results.items() if k != "queriers"}
    out = []
    for mine in results["queriers"].values():
        if not all(isinstance(mine.get(k), dict) for k in ("before", "after")):
            continue
        books = {"seconds": _add(shared.get("seconds", {}), mine.get("seconds", {})),
                 "bytes": {d: _add(shared.get("bytes", {}).get(d, {}), mine.get("bytes", {}).get(d, {}))
                           for d in ("sent", "received")}}  # fmt: skip
        out.append({**shared, **mine, **books})
    return out


def _add(a: dict, b: dict) -> dict:
    """Two per-step books added step by step."""
    return {k: a.get(k, 0) + b.get(k, 0) for k in {**a, **b}}


def find_results(root: str | Path) -> list[dict]:
    """Every run's results under ``root`` (e.g. a Hydra multirun folder), sorted by path, one per querier."""
    return [r for p in sorted(Path(root).rglob("results.json")) for r in per_querier(load_results(p))]


def mean_std(values: list[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (0 for a single value), ignoring ``None``."""
    vals = [v for v in values if v is not None]
    if not vals:
        return float("nan"), float("nan")
    mean = sum(vals) / len(vals)
    var = sum((v - mean) ** 2 for v in vals) / (len(vals) - 1) if len(vals) > 1 else 0.0
    return mean, math.sqrt(var)
