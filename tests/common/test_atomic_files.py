"""efficient_vdvae_common.atomic_files.staged_folder: a group of files appears together or not at all
(synthesis images on a broken model, issue 12 item 5)."""
from __future__ import annotations

from pathlib import Path

import pytest

from efficient_vdvae_common.atomic_files import staged_folder


def _tree(root: Path) -> dict[str, str]:
    return {p.relative_to(root).as_posix(): p.read_text() for p in sorted(root.rglob("*")) if p.is_file()}


def test_a_new_folder_appears_whole_and_the_staging_folder_goes(tmp_path):
    with staged_folder(tmp_path) as staging:
        assert staging.parent == tmp_path and staging.name.startswith(".staging-")
        (staging / "images" / "a").mkdir(parents=True)
        (staging / "images" / "a" / "1.png").write_text("one")
        (staging / "grid.png").write_text("grid")
        assert not (tmp_path / "images").exists()  # nothing in place before the block ends
    assert _tree(tmp_path) == {"images/a/1.png": "one", "grid.png": "grid"}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["grid.png", "images"]


def test_an_existing_folder_is_merged(tmp_path):
    (tmp_path / "images").mkdir()
    (tmp_path / "images" / "old.png").write_text("kept")
    (tmp_path / "images" / "same.png").write_text("before")
    with staged_folder(tmp_path) as staging:
        (staging / "images").mkdir()
        (staging / "images" / "same.png").write_text("after")
        (staging / "images" / "new.png").write_text("new")
    assert _tree(tmp_path) == {"images/new.png": "new", "images/old.png": "kept", "images/same.png": "after"}


def test_an_error_leaves_no_new_file(tmp_path):
    (tmp_path / "images").mkdir()
    (tmp_path / "images" / "same.png").write_text("before")
    with pytest.raises(RuntimeError, match="batch 3"):
        with staged_folder(tmp_path) as staging:
            (staging / "images").mkdir()
            (staging / "images" / "same.png").write_text("after")
            (staging / "images" / "batch-1.png").write_text("written before the failure")
            raise RuntimeError("batch 3 overflowed")
    assert _tree(tmp_path) == {"images/same.png": "before"}
    assert [p.name for p in tmp_path.iterdir()] == ["images"]
