"""Named variants (``conf/variants.yaml``): override lists on top of a cell's config, each name defined once.

The interference grid and the paper table read the same file, so one name means one set of overrides everywhere.
"""

from __future__ import annotations

from pathlib import Path

import yaml

from qkt_flower.config import CONF_DIR
from qkt_flower.errors import ConfigError

VARIANTS_FILE = CONF_DIR / "variants.yaml"


def _flat(items) -> list[str]:
    out: list[str] = []
    for item in items:
        out += _flat(item) if isinstance(item, list) else [str(item)]
    return out


def load_variants(path: Path = VARIANTS_FILE) -> tuple[dict[str, list[str]], dict[str, list[str]]]:
    """``(variants: {name: overrides}, lists: {"grid": [names], "ablations": [names]})`` from ``path``.

    Every name a list uses must be a variant (a typo stops here, not after an hour of runs).
    """
    data = yaml.safe_load(Path(path).read_text())
    variants = {str(name): _flat(overrides or []) for name, overrides in data["variants"].items()}
    lists = {key: [str(n) for n in data.get(key, [])] for key in ("grid", "ablations")}
    for key, names in lists.items():
        unknown = [n for n in names if n not in variants]
        if unknown:
            raise ConfigError(f"variants.yaml:{key}", unknown, "names defined under 'variants'")
    return variants, lists


def pick(variants: dict[str, list[str]], names: list[str]) -> dict[str, list[str]]:
    """``{name: overrides}`` for ``names``; an unknown name is one :class:`ConfigError` listing the known ones."""
    unknown = [n for n in names if n not in variants]
    if unknown:
        raise ConfigError("--variants", unknown, f"names from conf/variants.yaml: {sorted(variants)}")
    return {n: variants[n] for n in names}
