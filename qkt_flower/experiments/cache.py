"""Cache keys: everything that shapes a cached object, the code that made it included.

A cache key that ignores the code lets an old model answer for new code: a grid once loaded FedAvg models
cached by an older version, and its table could not be reproduced afterwards.
"""

from __future__ import annotations

import hashlib
import inspect
import json
import os
from pathlib import Path


def code_fingerprint(*code) -> str:
    """Hash of the source of ``code`` (modules, functions, classes)."""
    h = hashlib.sha256()
    for obj in code:
        h.update(inspect.getsource(obj).encode())
    return h.hexdigest()[:12]


def key_of(parts: list) -> str:
    """A short stable hash of JSON-able ``parts``."""
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:16]


AUTO = "auto"
"""``local.cache_dir=auto`` (the default): the user's cache folder."""


def local_models_dir(setting: str | None) -> Path | None:
    """The folder that keeps trained local models for ``local.cache_dir=setting``; ``None`` = no cache.

    ``auto`` is ``$XDG_CACHE_HOME/qkt-flower/local-models`` (``~/.cache/qkt-flower/local-models`` when
    ``XDG_CACHE_HOME`` is unset); any other string is a folder (``~`` expanded).
    """
    if not setting:
        return None
    if setting == AUTO:
        root = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
        return Path(root).expanduser() / "qkt-flower" / "local-models"
    return Path(setting).expanduser()
