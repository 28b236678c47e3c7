"""Helpers for the hparams tests: write variants of the reference config."""
from pathlib import Path

from hparams.reader import parse_text, rewrite

REFERENCE_CONFIG = Path(__file__).resolve().parent.parent / "fixtures" / "original_torch_small" / "config.cfg"


def reference_text() -> str:
    return REFERENCE_CONFIG.read_text()


def write_config(directory: Path, changes: dict, name: str = "hparams.cfg") -> Path:
    """The reference config with some entries' text replaced, written to directory/name."""
    text = rewrite(parse_text(reference_text()), changes)
    path = Path(directory) / name
    path.write_text(text)
    return path
