"""Test-wide settings: trained local models are cached in a folder of this test session, not the user's cache."""

from __future__ import annotations

import os

import pytest


@pytest.fixture(autouse=True, scope="session")
def _session_cache(tmp_path_factory):
    """``local.cache_dir=auto`` resolves under ``$XDG_CACHE_HOME``: point it at a fresh folder for the session.

    Subprocesses (the CLIs, Ray workers) inherit it. Tests that must train rather than load pass
    ``local.cache_dir=null``.
    """
    before = os.environ.get("XDG_CACHE_HOME")
    os.environ["XDG_CACHE_HOME"] = str(tmp_path_factory.mktemp("xdg-cache"))
    yield
    if before is None:
        os.environ.pop("XDG_CACHE_HOME", None)
    else:
        os.environ["XDG_CACHE_HOME"] = before
