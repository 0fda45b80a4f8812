"""Finished QKT steps on disk, so that re-running the same experiment with ``resume=true`` skips them.

One folder per experiment under ``checkpoint_dir``, named by the hash of its resolved config (minus the keys
that do not change results: ``resume``, ``overwrite``, ``progress``, ``device``, ``checkpoint_dir``,
``partition_cache``), so that re-running the same command finds it whatever Hydra's timestamped output folder
is. It holds ``steps.json`` (the server's view of each finished step: training replies, probe scores, QKT metrics,
baselines) and ``local_models/`` (every node's trained model: the nodes write it there through
``local.cache_dir``; in a deployment each node writes that path on its own disk).
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf

log = logging.getLogger(__name__)

NOT_RESULT_KEYS = ("resume", "overwrite", "progress", "device", "checkpoint_dir", "partition_cache")


def config_hash(cfg_yaml: str) -> str:
    """Hash of the resolved config, without the keys that cannot change a result."""
    tree = OmegaConf.to_container(OmegaConf.create(cfg_yaml), resolve=True)
    for key in NOT_RESULT_KEYS:
        tree.pop(key, None)  # type: ignore[union-attr]
    tree.get("local", {}).pop("cache_dir", None)  # type: ignore[union-attr]
    return hashlib.sha256(json.dumps(tree, sort_keys=True).encode()).hexdigest()[:16]


class Checkpoint:
    """The finished steps of one experiment (a no-op when ``root`` is ``None``).

    Without ``resume`` an existing folder of the same config is cleared first: a fresh run never mixes
    its steps with an earlier one's.
    """

    def __init__(self, root: str | Path | None, cfg_yaml: str, resume: bool) -> None:
        self.folder = Path(root).expanduser().resolve() / config_hash(cfg_yaml) if root else None
        self.steps: dict[str, Any] = {}
        if self.folder is None:
            return
        path = self.folder / "steps.json"
        if resume and path.is_file():
            self.steps = json.loads(path.read_text())
            log.info("resuming from %s: finished steps %s", self.folder, sorted(self.steps))
        elif not resume and self.folder.exists():
            shutil.rmtree(self.folder)
        self.folder.mkdir(parents=True, exist_ok=True)

    @property
    def local_models(self) -> str | None:
        """Folder the nodes keep their trained models in (``local.cache_dir``)."""
        return str(self.folder / "local_models") if self.folder else None

    def get(self, step: str) -> Any | None:
        """What a finished ``step`` left, or ``None``."""
        return self.steps.get(step)

    def put(self, step: str, value: Any) -> None:
        """Record ``step`` as finished (written atomically: a crash leaves the previous file)."""
        self.steps[step] = value
        if self.folder is None:
            return
        tmp = self.folder / "steps.json.tmp"
        tmp.write_text(json.dumps(self.steps, indent=1))
        tmp.replace(self.folder / "steps.json")
