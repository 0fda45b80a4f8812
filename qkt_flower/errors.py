"""Errors users see: one clear line, raised before any training starts."""

from __future__ import annotations


class ConfigError(ValueError):
    """A configuration value is not allowed; the message names the key, the value and what is allowed."""

    def __init__(self, key: str, value: object, allowed: str) -> None:
        self.key, self.value, self.allowed = key, value, allowed
        super().__init__(f"{key}={value!r} is not allowed: {allowed}")

    def under(self, prefix: str) -> ConfigError:
        """The same error with its key nested under ``prefix`` (``name`` -> ``dataset.name``)."""
        return ConfigError(f"{prefix}.{self.key}", self.value, self.allowed)


def require(ok: bool, key: str, value: object, allowed: str) -> None:
    """Raise :class:`ConfigError` ``(key, value, allowed)`` unless ``ok``."""
    if not ok:
        raise ConfigError(key, value, allowed)


class DataError(Exception):
    """Dataset files are missing or cannot be read; the message names the file and what to do."""


class DataNotFoundError(DataError, FileNotFoundError):
    """Dataset files are missing; the message says where they were looked for and how to get them."""
