"""The configuration object and `load_config`."""
from __future__ import annotations

import copy
from pathlib import Path
from typing import Any, Iterable, Iterator

from .errors import ConfigError, MissingKeyError, short_repr, shorten
from .evaluator import UnsafeExpressionError, evaluate_value
from .reader import ParsedFile, read_file
from .schema import REQUIRED, SCHEMA, check_value
from .validation import validate


class Section:
    """One `[section]`: settings are attributes (`hp.model.up_strides`)."""

    def __init__(self, name: str, values: dict[str, Any]):
        object.__setattr__(self, "_name", name)
        object.__setattr__(self, "_values", values)

    def __getattr__(self, key: str) -> Any:
        values = object.__getattribute__(self, "_values")
        if key.startswith("__"):
            raise AttributeError(key)
        try:
            return values[key]
        except KeyError:
            name = object.__getattribute__(self, "_name")
            raise MissingKeyError(f"[{name}] has no key {key!r}") from None

    def __setattr__(self, key: str, value: Any) -> None:
        raise AttributeError("configuration values are read-only; use overrides")

    def __iter__(self) -> Iterator[str]:
        return iter(self._values)

    def __contains__(self, key: object) -> bool:
        return key in self._values

    def items(self):
        return self._values.items()

    def to_dict(self) -> dict[str, Any]:
        return copy.deepcopy(self._values)

    def __repr__(self) -> str:
        return f"Section({self._name!r}, {self._values!r})"


class Config:
    """A validated configuration: sections are attributes (`hp.train`)."""

    def __init__(self, sections: dict[str, dict[str, Any]], source: str | None = None):
        object.__setattr__(self, "_sections", {name: Section(name, values) for name, values in sections.items()})
        object.__setattr__(self, "source", source)

    def __getattr__(self, name: str) -> Section:
        if name.startswith("__"):
            raise AttributeError(name)
        try:
            return object.__getattribute__(self, "_sections")[name]
        except KeyError:
            raise MissingKeyError(f"the configuration has no section [{name}]") from None

    def __setattr__(self, key: str, value: Any) -> None:
        raise AttributeError("configuration values are read-only; use overrides")

    def __iter__(self) -> Iterator[str]:
        return iter(self._sections)

    def to_dict(self) -> dict[str, dict[str, Any]]:
        """Plain nested dicts of copies of every value."""
        return {name: section.to_dict() for name, section in self._sections.items()}

    def __repr__(self) -> str:
        return f"Config(source={self.source!r})"


def parse_override(text: str) -> tuple[str, str, str]:
    """`section.key=value` -> (section, key, value text)."""
    target, sep, value = text.partition("=")
    section, dot, key = target.strip().partition(".")
    if not sep or not dot or not section or not key or not value.strip():
        raise ConfigError(f"override {short_repr(text)}: expected section.key=value")
    if section not in SCHEMA:
        raise ConfigError(
            f"override {short_repr(text)}: unknown section [{shorten(section)}] (sections: {', '.join(SCHEMA)})"
        )
    if key not in SCHEMA[section]:
        raise ConfigError(f"override {short_repr(text)}: unknown key {short_repr(key)} in [{section}]")
    return section, key, value.strip()


def evaluate_entry(section: str, key: str, text: str, where: str) -> Any:
    """Evaluate one value's text; errors name the file, section, key and text."""
    try:
        value = evaluate_value(text)
    except (UnsafeExpressionError, SyntaxError, ValueError, TypeError, ZeroDivisionError, OverflowError,
            RecursionError) as error:
        reason = error.msg if isinstance(error, SyntaxError) else str(error)
        # Python's own messages may quote the value (`int('9' * 4000 + 'x')`): keep both short.
        raise ConfigError(f"{where}: [{section}] {key} = {shorten(text)}: {shorten(reason)}") from None
    if section == "run" and key == "name":
        # The original kept quotes in names and made `logs-'x'`; a name is
        # always a string, whatever way it was written.
        value = str(value).strip("'\"")
    return value


def raw_values(parsed: ParsedFile, overrides: Iterable[str] = ()) -> dict[tuple[str, str], tuple[str, str]]:
    """(section, key) -> (value text, where it came from), overrides applied."""
    raw: dict[tuple[str, str], tuple[str, str]] = {}
    for section, entries in parsed.sections.items():
        if section not in SCHEMA:
            raise ConfigError(f"{parsed.source}: unknown section [{section}] (sections: {', '.join(SCHEMA)})")
        for key, entry in entries.items():
            if key not in SCHEMA[section]:
                raise ConfigError(f"{parsed.source}:{entry.first_line + 1}: unknown key {key!r} in [{section}]")
            raw[(section, key)] = (entry.text, f"{parsed.source}:{entry.first_line + 1}")
    for override in overrides:
        section, key, text = parse_override(override)
        raw[(section, key)] = (text, f"override {short_repr(override)}")
    return raw


def build_config(parsed: ParsedFile, overrides: Iterable[str] = ()) -> Config:
    """Evaluate, type-check and validate a parsed file with overrides."""
    raw = raw_values(parsed, overrides)
    sections: dict[str, dict[str, Any]] = {}
    for section, keys in SCHEMA.items():
        values = sections[section] = {}
        for key, spec in keys.items():
            if (section, key) in raw:
                text, where = raw[(section, key)]
                value = evaluate_entry(section, key, text, where)
                try:
                    values[key] = check_value(section, key, value)
                except ConfigError as error:
                    raise ConfigError(f"{where}: {error}") from None
            elif spec.default is REQUIRED:
                raise MissingKeyError(f"{parsed.source}: [{section}] {key} is missing")
            else:
                values[key] = copy.deepcopy(spec.default)
    try:
        validate(lambda section, key: sections[section][key])
    except ConfigError as error:
        raise ConfigError(f"{parsed.source}: {error}") from None
    return Config(sections, source=parsed.source)


def load_config(path: str | Path, overrides: Iterable[str] = ()) -> Config:
    """Read, check and return a configuration. No side effects.

    Args:
        path: a `.cfg` file.
        overrides: `section.key=value` strings applied on top of the file.

    Raises:
        ConfigError: one line naming the file, section, key and value.
    """
    return build_config(read_file(path), tuple(overrides))
