"""Reading the INI layout of `.cfg` files, keeping where each entry sits.

The layout is the one `configparser` reads (`[section]`, `key = value` or
`key: value`, whole-line `#`/`;` comments, indented continuation lines), but
parsed here line by line so that an entry can be rewritten in place when a
run's configuration is saved with overrides, comments kept.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

from .errors import ConfigError, short_repr

_SECTION = re.compile(r"^\[\s*([^\]]+?)\s*\]\s*$")
_ENTRY = re.compile(r"^([A-Za-z_][A-Za-z0-9_]*)\s*[=:]\s*(.*)$")


@dataclass
class Entry:
    """One `key = value` entry: the value's text and its lines [first, last]."""

    text: str
    first_line: int
    last_line: int


@dataclass
class ParsedFile:
    """Sections in file order, each an ordered dict of key -> Entry."""

    source: str
    lines: list[str]
    sections: dict[str, dict[str, Entry]] = field(default_factory=dict)
    section_end: dict[str, int] = field(default_factory=dict)


def read_file(path: str | Path) -> ParsedFile:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: configuration file not found")
    try:
        # utf-8-sig: editors on Windows start files with a byte-order mark.
        text = path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as error:
        raise ConfigError(f"{path}: cannot read configuration file ({error})") from None
    return parse_text(text, source=str(path))


def parse_text(text: str, source: str = "<string>") -> ParsedFile:
    lines = text.removeprefix("\ufeff").splitlines()
    parsed = ParsedFile(source=source, lines=lines)
    section: str | None = None
    entry: Entry | None = None
    for number, line in enumerate(lines):
        stripped = line.strip()
        if not stripped or stripped[0] in "#;":
            continue
        if line[0].isspace():
            if entry is None:
                raise ConfigError(f"{source}:{number + 1}: indented line continues no entry: {short_repr(stripped)}")
            entry.text += " " + stripped
            entry.last_line = number
            parsed.section_end[section] = number
            continue
        header = _SECTION.match(line)
        if header:
            section = header.group(1)
            if section in parsed.sections:
                raise ConfigError(f"{source}:{number + 1}: section [{section}] appears twice")
            parsed.sections[section] = {}
            parsed.section_end[section] = number
            entry = None
            continue
        match = _ENTRY.match(line)
        if match is None:
            raise ConfigError(f"{source}:{number + 1}: expected `key = value` or `[section]`, got {short_repr(stripped)}")
        if section is None:
            raise ConfigError(f"{source}:{number + 1}: entry {match.group(1)!r} comes before any [section]")
        key = match.group(1)
        if key in parsed.sections[section]:
            raise ConfigError(f"{source}:{number + 1}: [{section}] {key} is set twice")
        entry = Entry(match.group(2).strip(), number, number)
        parsed.sections[section][key] = entry
        parsed.section_end[section] = number
    return parsed


def rewrite(parsed: ParsedFile, values: dict[tuple[str, str], str], header: str = "") -> str:
    """The file's text with the given entries replaced by `key = text`.

    Entries that the file lacks are appended at the end of their section
    (which is created if needed). Comments and layout are kept otherwise.
    """
    lines = list(parsed.lines)
    replacements: dict[int, list[str]] = {}
    removed: set[int] = set()
    appended: dict[str, list[str]] = {}
    for (section, key), text in values.items():
        entry = parsed.sections.get(section, {}).get(key)
        if entry is None:
            appended.setdefault(section, []).append(f"{key} = {text}")
            continue
        replacements[entry.first_line] = [f"{key} = {text}"]
        removed.update(range(entry.first_line + 1, entry.last_line + 1))
    insert_after: dict[int, list[str]] = {}
    for section, new_lines in appended.items():
        if section in parsed.section_end:
            insert_after.setdefault(parsed.section_end[section], []).extend(new_lines)
        else:
            insert_after.setdefault(len(lines) - 1, []).extend(["", f"[{section}]", *new_lines])
    out = [header.rstrip("\n")] if header else []
    if not lines:
        for new_lines in insert_after.values():
            out.extend(new_lines)
    for number, line in enumerate(lines):
        if number in removed:
            pass
        else:
            out.extend(replacements.get(number, [line]))
        out.extend(insert_after.get(number, []))
    return "\n".join(out) + "\n"
