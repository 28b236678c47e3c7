"""Saved runs: the first run of a name keeps its configuration, later runs
(resumed training, synthesis) read that copy.

`logs-<name>/hparams-<name>.cfg` is written once, atomically, by one
process. A later run of the same name loads it instead of the main file, so
a resumed run and its inference use exactly the settings it was trained
with; overrides may still change training and synthesis settings, but not
what defines the model or its data.
"""
from __future__ import annotations

import sys
from datetime import datetime, timezone
from pathlib import Path
from typing import Iterable

from efficient_vdvae_common.atomic_files import write_text_atomic

from .config import Config, build_config, evaluate_entry, parse_override
from .errors import ConfigError, short_repr
from .formatting import format_value
from .reader import ParsedFile, read_file, rewrite
from .schema import FROZEN_IN_SAVED_RUN, REQUIRED, SCHEMA, Key, check_value


def logs_dir(name: str, root: str | Path = ".") -> Path:
    return Path(root) / f"logs-{name}"


def checkpoints_path(name: str, root: str | Path = ".") -> Path:
    """`checkpoints-<name>`: one file in PyTorch (the original's layout), a folder in JAX."""
    return Path(root) / f"checkpoints-{name}"


def saved_config_path(name: str, root: str | Path = ".") -> Path:
    return logs_dir(name, root) / f"hparams-{name}.cfg"


def run_name(path: str | Path, overrides: Iterable[str] = ()) -> str:
    """The run name a file and its overrides select, without full validation."""
    parsed = read_file(path)
    text, where = None, str(path)
    entry = parsed.sections.get("run", {}).get("name")
    if entry is not None:
        text, where = entry.text, f"{parsed.source}:{entry.first_line + 1}"
    for override in overrides:
        section, key, value = parse_override(override)
        if (section, key) == ("run", "name"):
            text, where = value, f"override {short_repr(override)}"
    if text is None:
        raise ConfigError(f"{parsed.source}: [run] name is missing")
    name = evaluate_entry("run", "name", text, where)
    try:
        return check_value("run", "name", name)
    except ConfigError as error:
        raise ConfigError(f"{where}: {error}") from None


def load_run_config(
    path: str | Path,
    overrides: Iterable[str] = (),
    *,
    save: bool = False,
    is_writer: bool = True,
    root: str | Path = ".",
) -> Config:
    """The configuration of a run, honouring its saved copy.

    Args:
        path: the main `.cfg` file (e.g. `./hparams.cfg`).
        overrides: `section.key=value` strings for this invocation only.
        save: write the saved copy if the run has none yet (training does).
        is_writer: whether this process writes it (rank 0 of a data-parallel
            run); other processes use the same values without writing.
        root: where `logs-<name>/` lives (the working directory).

    Raises:
        ConfigError: invalid file or value, or an override that would change
            a saved run's model or data settings. Nothing is written then.
    """
    overrides = tuple(overrides)
    name = run_name(path, overrides)
    saved = saved_config_path(name, root)
    if saved.is_file():
        parsed = read_file(saved)
        _refuse_frozen_changes(parsed, overrides, saved)
        config = build_config(parsed, overrides)
        differing = _frozen_keys_differing(read_file(path), config)
        if differing and is_writer:
            shown = ", ".join(differing[:4]) + (f" and {len(differing) - 4} more" if len(differing) > 4 else "")
            print(f"note: run '{name}' already exists: using its saved configuration {saved}, not {path} "
                  f"(which differs in {shown}); use a new run.name for a new model", file=sys.stderr)
        return config
    parsed = read_file(path)
    config = build_config(parsed, overrides)
    if save and is_writer:
        write_text_atomic(saved, render_saved_config(parsed, overrides, config))
    return config


def _frozen_keys_differing(main: ParsedFile, saved_config: Config) -> list[str]:
    """The model and data keys (those a saved run keeps) whose value in the main
    file is not the saved run's value; a value that does not evaluate differs."""
    differing = []
    for section, keys in SCHEMA.items():
        for key, spec in keys.items():
            if (section, key) in FROZEN_IN_SAVED_RUN and not _same_as_saved(main, section, key, spec, saved_config):
                differing.append(f"{section}.{key}")
    return differing


def _same_as_saved(main: ParsedFile, section: str, key: str, spec: Key, saved_config: Config) -> bool:
    entry = main.sections.get(section, {}).get(key)
    if entry is None:
        return spec.default is not REQUIRED and spec.default == getattr(getattr(saved_config, section), key)
    try:
        value = check_value(section, key, evaluate_entry(section, key, entry.text, main.source))
    except ConfigError:
        return False
    return value == getattr(getattr(saved_config, section), key)


def _refuse_frozen_changes(parsed: ParsedFile, overrides: tuple[str, ...], saved: Path) -> None:
    saved_config = build_config(parsed)
    for override in overrides:
        section, key, text = parse_override(override)
        if (section, key) not in FROZEN_IN_SAVED_RUN:
            continue
        wanted = evaluate_entry(section, key, text, f"override {short_repr(override)}")
        current = getattr(getattr(saved_config, section), key)
        if wanted != current:
            raise ConfigError(
                f"override {short_repr(override)}: [{section}] {key} of a saved run cannot change "
                f"(it was trained with {short_repr(current)}; see {saved}); use a new run.name instead"
            )


def render_saved_config(parsed: ParsedFile, overrides: tuple[str, ...], config: Config) -> str:
    """The main file's text, comments kept, with overridden values written
    in, and every default the file relied on written out, so the saved run
    does not change if a default changes later."""
    values: dict[tuple[str, str], str] = {}
    for override in overrides:
        section, key, _ = parse_override(override)
        values[(section, key)] = format_value(getattr(getattr(config, section), key))
    for section, keys in SCHEMA.items():
        for key in keys:
            if key not in parsed.sections.get(section, {}):
                values[(section, key)] = format_value(getattr(getattr(config, section), key))
    stamp = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")
    header = f"# Saved configuration of run '{config.run.name}', from {parsed.source} on {stamp}."
    if overrides:
        header += "\n# Overrides applied: " + " ".join(overrides)
    header += "\n# Later runs of this name read this file; edit synthesis settings here.\n"
    return rewrite(parsed, values, header)
