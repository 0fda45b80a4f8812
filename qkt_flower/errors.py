"""Errors users see: one clear line, raised before any training starts."""


class ConfigError(ValueError):
    """A configuration value is not allowed; the message names the key, the value and what is allowed."""

    def __init__(self, key: str, value: object, allowed: str) -> None:
        self.key, self.value, self.allowed = key, value, allowed
        super().__init__(f"{key}={value!r} is not allowed: {allowed}")


class DataNotFoundError(FileNotFoundError):
    """Dataset files are missing; the message says where they were looked for and how to get them."""
