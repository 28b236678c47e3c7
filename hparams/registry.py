"""`HParams`, the entry point users of the original library know.

`HParams(project_path, name=...)` reads `<project_path>/hparams.cfg`
(honouring the run's saved copy) and registers the object under `name`, so
that `HParams.get_hparams_by_name(name)` returns it from anywhere in the
process. New code should pass the config object explicitly instead.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar, Iterable

from .config import Config, Section
from .saved_run import load_run_config


class HParams:
    _registry: ClassVar[dict[str, "HParams"]] = {}

    def __init__(
        self,
        project_path: str | Path,
        name: str = "efficient_vdvae",
        overrides: Iterable[str] = (),
        save: bool = True,
        config_file: str = "hparams.cfg",
    ):
        self._config = load_run_config(Path(project_path) / config_file, overrides, save=save)
        HParams._registry[name] = self

    @classmethod
    def get_hparams_by_name(cls, name: str) -> "HParams":
        try:
            return cls._registry[name]
        except KeyError:
            raise KeyError(f"no HParams registered under {name!r}") from None

    @property
    def config(self) -> Config:
        return self._config

    def __getattr__(self, section: str) -> Section:
        if section.startswith("_"):
            raise AttributeError(section)
        return getattr(self._config, section)

    def to_dict(self) -> dict[str, dict[str, Any]]:
        return self._config.to_dict()
