"""Errors raised by the hparams package."""
from __future__ import annotations


class ConfigError(ValueError):
    """A configuration file, key or value is invalid.

    The message is one line naming the culprit (file, section, key, text).
    """


class MissingKeyError(ConfigError, AttributeError):
    """A key or section is absent.

    Also an AttributeError, so that ``getattr(section, key, default)`` works.
    """
