"""Errors raised by the hparams package, and the short echoes of values
that their messages quote."""
from __future__ import annotations

from typing import Any

# A message quotes at most this many characters of a value or its text, so
# that a huge value cannot make the message itself huge or slow to build.
ECHO_LIMIT = 120


class ConfigError(ValueError):
    """A configuration file, key or value is invalid.

    The message is one line naming the culprit (file, section, key, text).
    """


class MissingKeyError(ConfigError, AttributeError):
    """A key or section is absent.

    Also an AttributeError, so that ``getattr(section, key, default)`` works.
    """


def shorten(text: str, limit: int = ECHO_LIMIT) -> str:
    """`text` on one line, cut to `limit` characters (marked with '...')."""
    head = text[:limit].replace("\n", " ").replace("\r", " ")
    return head + "..." if len(text) > limit else head


class _Full(Exception):
    pass


def short_repr(value: Any, limit: int = ECHO_LIMIT) -> str:
    """`repr(value)` cut to about `limit` characters.

    The cost depends on `limit`, not on the size of `value`: containers are
    walked only until enough text is written.
    """
    parts: list[str] = []
    room = [limit]

    def emit(text: str) -> None:
        parts.append(text)
        room[0] -= len(text)
        if room[0] < 0:
            raise _Full

    def walk(item: Any) -> None:
        if isinstance(item, (list, tuple)):
            emit("[" if isinstance(item, list) else "(")
            for index, element in enumerate(item):
                if index:
                    emit(", ")
                walk(element)
            if isinstance(item, tuple) and len(item) == 1:
                emit(",")
            emit("]" if isinstance(item, list) else ")")
        elif isinstance(item, int) and not isinstance(item, bool) and item.bit_length() > 4 * limit:
            # Writing out a huge integer costs time (and may be refused by Python).
            emit(f"<an integer of {item.bit_length()} bits>")
        elif isinstance(item, str) and len(item) > limit:
            emit(repr(item[: limit + 1]))
        else:
            emit(repr(item))

    try:
        walk(value)
    except _Full:
        return "".join(parts)[:limit] + "..."
    return "".join(parts)
