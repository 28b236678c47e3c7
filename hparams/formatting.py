"""Writing values back as config text that reads well and evaluates exactly.

Lists are written as runs, `[1] * 11 + [2]`, the way people write them.
"""
from __future__ import annotations

from itertools import groupby
from typing import Any

# Shorter runs read better written out: [3, 3, 1] rather than [3] * 2 + [1].
_MIN_RUN = 3


def format_value(value: Any) -> str:
    """Text that the evaluator turns back into an equal value (same types)."""
    if isinstance(value, list):
        return _format_list(value)
    if isinstance(value, tuple):
        inner = ", ".join(format_value(element) for element in value)
        return f"({inner},)" if len(value) == 1 else f"({inner})"
    return repr(value)


def _format_list(values: list) -> str:
    if not values:
        return "[]"
    parts: list[str] = []
    literal: list[str] = []
    for _, run in groupby(values, key=lambda v: (type(v), v if not isinstance(v, (list, tuple)) else repr(v))):
        run = list(run)
        if len(run) >= _MIN_RUN:
            if literal:
                parts.append("[" + ", ".join(literal) + "]")
                literal = []
            parts.append(f"[{format_value(run[0])}] * {len(run)}")
        else:
            literal.extend(format_value(v) for v in run)
    if literal:
        parts.append("[" + ", ".join(literal) + "]")
    return " + ".join(parts)
