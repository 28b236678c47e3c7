"""Issue 12 item 7 (data part): a data.*_path that is a file is one line, '<path> is not a folder', exit 2."""
import os
import subprocess
import sys

import pytest

from efficient_vdvae_common.data import build_split
from efficient_vdvae_common.data.readers import NotAFolderError
from tests.conftest import REFERENCE_CONFIG, REPO_ROOT

PATH_KEYS = {"train": "train_data_path", "val": "val_data_path", "synthesis": "synthesis_data_path"}


@pytest.mark.parametrize("split", sorted(PATH_KEYS))
@pytest.mark.parametrize("source", ["custom", "imagenet"])
def test_a_data_path_that_is_a_file_is_not_a_folder(folder_config, tmp_path, split, source):
    hp, _ = folder_config(f"data.{PATH_KEYS[split]}='{tmp_path / 'notes.txt'}'", f"data.dataset_source={source}")
    (tmp_path / "notes.txt").write_text("not a dataset")
    with pytest.raises(NotAFolderError) as error:
        build_split(hp, split)
    assert str(error.value) == (f"data.{PATH_KEYS[split]}: {tmp_path / 'notes.txt'} is not a folder (it is a file); "
                                f"point it at the {'npz' if source == 'imagenet' else 'image'} folder")


@pytest.mark.parametrize("framework", ["efficient_vdvae_torch", "efficient_vdvae_jax"])
def test_train_py_exits_2_with_one_line(tmp_path, framework):
    (tmp_path / "train.png").write_bytes(b"a file where a folder belongs")
    result = subprocess.run(
        [sys.executable, str(REPO_ROOT / framework / "train.py"), "--config", str(REFERENCE_CONFIG), "--set",
         "run.name=filepath", "data.dataset_source=custom", f"data.train_data_path='{tmp_path / 'train.png'}'",
         f"data.val_data_path='{tmp_path / 'train.png'}'", f"data.synthesis_data_path='{tmp_path / 'train.png'}'"],
        cwd=tmp_path, capture_output=True, text=True, timeout=300,
        env={**os.environ, "CUDA_VISIBLE_DEVICES": "", "JAX_PLATFORMS": "cpu"})
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert result.returncode == 2 and len(lines) == 1, result.stderr[-2000:]
    assert lines[0] == (f"error: data.train_data_path: {tmp_path / 'train.png'} is not a folder (it is a file); "
                        "point it at the image folder")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["train.png"]  # no run folders left behind
