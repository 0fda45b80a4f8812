"""Finished QKT steps on disk, so that re-running the same experiment with ``resume=true`` skips them.

One folder per experiment under ``checkpoint_dir``, named by the hash of its resolved config (minus the keys
that do not change results: ``resume``, ``overwrite``, ``progress``, ``device``, ``checkpoint_dir``,
``partition_cache``) and of the package's code, so that re-running the same command finds it whatever Hydra's
timestamped output folder is, and a code change starts afresh. It holds ``steps.json`` (that config and code
fingerprint, and the server's view of each finished step: training replies, probe scores, QKT metrics,
baselines) and, in simulation, ``local_models/`` (every simulated node's trained model: the simulation runtime
gives its nodes that folder as their cache; a deployed node keeps its models where its own ``cache-dir`` says,
:mod:`qkt_flower.fl.node`). ``resume=true`` refuses a
``steps.json`` that is corrupt, or was written for another config or by other code, on one line.
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
from functools import cache
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf

from qkt_flower.errors import ConfigError

log = logging.getLogger(__name__)

NOT_RESULT_KEYS = ("resume", "overwrite", "progress", "device", "checkpoint_dir", "partition_cache")
PACKAGE = Path(__file__).resolve().parents[1]  # qkt_flower/


@cache
def code_fingerprint() -> str:
    """Hash of every module of the package: a checkpoint written by other code is never resumed."""
    h = hashlib.sha256()
    for path in sorted(PACKAGE.rglob("*.py")):
        h.update(str(path.relative_to(PACKAGE)).encode() + b"\0" + path.read_bytes())
    return h.hexdigest()[:16]


def result_config(cfg_yaml: str) -> dict:
    """The resolved config without the keys that cannot change a result."""
    tree = OmegaConf.to_container(OmegaConf.create(cfg_yaml), resolve=True)
    for key in NOT_RESULT_KEYS:
        tree.pop(key, None)  # type: ignore[union-attr]
    tree.get("local", {}).pop("cache_dir", None)  # type: ignore[union-attr]
    return tree  # type: ignore[return-value]


def header(cfg_yaml: str) -> dict:
    """What a checkpoint belongs to: the result-shaping config and the code fingerprint."""
    return {"config": result_config(cfg_yaml), "code": code_fingerprint()}


def config_hash(cfg_yaml: str | dict) -> str:
    """Hash of the result-shaping config and of the code (a YAML text or its :func:`header`): the folder's name."""
    parts = header(cfg_yaml) if isinstance(cfg_yaml, str) else cfg_yaml
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:16]


def folder_of(root: str | Path | None, cfg_yaml: str | dict) -> Path | None:
    """The experiment's checkpoint folder under ``root`` (``None`` without a root)."""
    return Path(root).expanduser().resolve() / config_hash(cfg_yaml) if root else None


def local_models_dir(root: str | Path | None, cfg_yaml: str) -> str | None:
    """Where the simulated nodes of this experiment keep their trained models (``None`` without a root)."""
    folder = folder_of(root, cfg_yaml)
    return str(folder / "local_models") if folder else None


def _differences(saved: Any, current: Any, prefix: str = "") -> list[str]:
    """Dotted keys whose values differ between two config trees."""
    if isinstance(saved, dict) and isinstance(current, dict):
        keys = sorted(set(saved) | set(current), key=str)
        return [d for k in keys for d in _differences(saved.get(k), current.get(k), f"{prefix}{k}.")]
    return [] if saved == current else [f"{prefix[:-1]}: {saved!r} there, {current!r} here"]


def read_steps(path: Path, cfg_yaml: str | dict) -> dict[str, Any]:
    """The finished steps in ``path``, refused (:class:`ConfigError` on ``resume``) unless they are this run's.

    A checkpoint holds the config and code fingerprint it was written under; a file that is not JSON, has another
    shape, or belongs to another config or another version of the code is never resumed.
    """

    def refuse(why: str) -> ConfigError:
        return ConfigError("resume", True, f"{path} {why}: delete that folder or run without resume=true")

    try:
        saved = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise refuse(f"cannot be read ({type(err).__name__})") from None
    if not (isinstance(saved, dict) and {"config", "code", "steps"} <= set(saved) and isinstance(saved["steps"], dict)):
        raise refuse("is not a checkpoint (no config, code and steps)")
    mine = header(cfg_yaml) if isinstance(cfg_yaml, str) else cfg_yaml
    if saved["code"] != mine["code"]:
        raise refuse("was written by another version of the code")
    diff = _differences(saved["config"], mine["config"])
    if diff:
        raise refuse(f"belongs to another config ({'; '.join(diff[:3])})")
    return saved["steps"]


def check_resumable(root: str | Path | None, cfg_yaml: str, resume: bool) -> None:
    """Refuse, before any work, a ``resume`` from a checkpoint that is not this run's (:func:`read_steps`)."""
    if root and resume:
        mine = header(cfg_yaml)
        path = folder_of(root, mine) / "steps.json"
        if path.is_file():
            read_steps(path, mine)


class Checkpoint:
    """The finished steps of one experiment (a no-op when ``root`` is ``None``).

    Without ``resume`` an existing folder of the same config is cleared first: a fresh run never mixes
    its steps with an earlier one's. ``steps.json`` holds the config and code fingerprint beside the steps.
    """

    def __init__(self, root: str | Path | None, cfg_yaml: str, resume: bool) -> None:
        self._header = header(cfg_yaml)  # parsed once: it names the folder and is checked against steps.json
        self.folder = folder_of(root, self._header)
        self.steps: dict[str, Any] = {}
        if self.folder is None:
            return
        path = self.folder / "steps.json"
        if resume and path.is_file():
            self.steps = read_steps(path, self._header)
            log.info("resuming from %s: finished steps %s", self.folder, sorted(self.steps))
        elif not resume and self.folder.exists():
            shutil.rmtree(self.folder)
        self.folder.mkdir(parents=True, exist_ok=True)

    def get(self, step: str) -> Any | None:
        """What a finished ``step`` left, or ``None``."""
        return self.steps.get(step)

    def put(self, step: str, value: Any) -> None:
        """Record ``step`` as finished (written atomically: a crash leaves the previous file)."""
        self.steps[step] = value
        if self.folder is None:
            return
        tmp = self.folder / "steps.json.tmp"
        tmp.write_text(json.dumps({**self._header, "steps": self.steps}, indent=1))
        tmp.replace(self.folder / "steps.json")
