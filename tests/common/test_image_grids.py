"""The grid pictures synthesis writes (efficient_vdvae_common/image_grids.py), both frameworks:
their files exist, their size is rows x columns of tiles plus padding, each tile is the per-image file."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from efficient_vdvae_common.image_grids import (GRID_PAD_VALUE, GRID_PADDING, generation_grid_path, grid_layout,
                                                reconstruction_grid, reconstruction_grid_path)
from efficient_vdvae_common.synthesis_files import generation_dir, reconstruction_dir, temperature_folder_name
from hparams import load_config
from tests.conftest import REFERENCE_CONFIG, REFERENCE_OVERRIDES
from tests.helpers import TWO_LEVEL_MODEL, numbered_pngs, write_random_pngs

RES = 8
N_SYNTHESIS = 11  # 8 columns: two pairs of rows, the second pair 3 images and 5 blank tiles
N_GENERATED = 6  # batch 3, 2 batches
SETTINGS = "[0.8, ('linear', 0.7, 0.9)]"


def _tile(grid: np.ndarray, row: int, col: int, size: int = RES) -> np.ndarray:
    top, left = GRID_PADDING + row * (size + GRID_PADDING), GRID_PADDING + col * (size + GRID_PADDING)
    return grid[top:top + size, left:left + size]


def _read(path: Path) -> np.ndarray:
    return np.asarray(Image.open(path).convert("RGB"))


def _hp(images: Path, sampling: str):
    return load_config(REFERENCE_CONFIG, overrides=REFERENCE_OVERRIDES + (f"data.target_res={RES}",) + TWO_LEVEL_MODEL + (
        "data.dataset_source=custom",
        f"data.train_data_path='{images}'", f"data.val_data_path='{images}'", f"data.synthesis_data_path='{images}'",
        "synthesis.batch_size=3", "synthesis.n_generation_batches=2", f"synthesis.temperature_settings={SETTINGS}",
        f"synthesis.output_sampling={sampling}", "synthesis.save_target_in_reconstruction=True"))


def _run_torch(hp, logs: Path) -> None:
    import torch

    from efficient_vdvae_torch.model import UniversalAutoEncoder
    from efficient_vdvae_torch.synthesis import generate, reconstruct, seed_everything

    seed_everything(0)
    model = UniversalAutoEncoder(hp).eval().requires_grad_(False)
    reconstruct(hp, model, torch.device("cpu"), reconstruction_dir(logs))
    generate(hp, model, torch.device("cpu"), generation_dir(logs))


def _run_jax(hp, logs: Path) -> None:
    import jax

    from efficient_vdvae_jax.model import UniversalAutoEncoder
    from efficient_vdvae_jax.synthesis import generate, reconstruct
    from efficient_vdvae_jax.train_step import init_params

    model = UniversalAutoEncoder(hp)
    params = init_params(hp, model, jax.random.PRNGKey(0))
    reconstruct(hp, model, params, reconstruction_dir(logs))
    generate(hp, model, params, generation_dir(logs))


@pytest.fixture(scope="module", params=["torch", "jax"])
def synthesized(request, tmp_path_factory):
    """(hp, logs folder, synthesis image names) after reconstruction and generation with an untrained model."""
    root = tmp_path_factory.mktemp(f"grids_{request.param}")
    names = numbered_pngs(N_SYNTHESIS)
    write_random_pngs(root / "images", names, seed=3, size=RES)
    hp = _hp(root / "images", "mean")
    logs = root / "logs-grids"
    {"torch": _run_torch, "jax": _run_jax}[request.param](hp, logs)
    return hp, logs, names


def test_reconstruction_grid_rows_of_targets_above_rows_of_reconstructions(synthesized):
    _, logs, names = synthesized
    path = reconstruction_grid_path(reconstruction_dir(logs))
    assert path == logs / "synthesis-images" / "grids" / "reconstruction.png"
    grid = _read(path)
    # Readable like the per-image files (the atomic writer's temporary file is private).
    assert path.stat().st_mode & 0o777 == (reconstruction_dir(logs) / "img_000.png").stat().st_mode & 0o777
    cols, pair_rows = 8, 2  # 11 images: 8 then 3
    assert grid.shape == (GRID_PADDING + 2 * pair_rows * (RES + GRID_PADDING),
                          GRID_PADDING + cols * (RES + GRID_PADDING), 3)
    stems = sorted(Path(n).stem for n in names)
    for index, stem in enumerate(stems):
        pair, col = divmod(index, cols)
        np.testing.assert_array_equal(_tile(grid, 2 * pair, col),
                                      _read(reconstruction_dir(logs) / f"{stem}-target.png"))
        np.testing.assert_array_equal(_tile(grid, 2 * pair + 1, col), _read(reconstruction_dir(logs) / f"{stem}.png"))
    # Blank tiles after the last image, padding between tiles.
    assert (_tile(grid, 3, 3) == GRID_PAD_VALUE).all() and (_tile(grid, 2, 7) == GRID_PAD_VALUE).all()
    assert (grid[:GRID_PADDING] == GRID_PAD_VALUE).all() and (grid[:, :GRID_PADDING] == GRID_PAD_VALUE).all()


def test_one_sample_grid_per_temperature_setting(synthesized):
    hp, logs, _ = synthesized
    grids = sorted((logs / "synthesis-images" / "grids").glob("generation-*.png"))
    assert len(grids) == len(hp.synthesis.temperature_settings)
    for index, setting in enumerate(hp.synthesis.temperature_settings):
        folder = generation_dir(logs) / temperature_folder_name(index, setting)
        path = generation_grid_path(generation_dir(logs), folder.name)
        assert path in grids
        grid = _read(path)
        assert grid.shape == (GRID_PADDING + 1 * (RES + GRID_PADDING),
                              GRID_PADDING + N_GENERATED * (RES + GRID_PADDING), 3)
        for index in range(N_GENERATED):
            np.testing.assert_array_equal(_tile(grid, 0, index), _read(folder / f"image-{index:04d}.png"))


def test_grid_layout_caps_large_images():
    assert grid_layout(32, 32) == (8, 8)
    cols, rows = grid_layout(1024, 1024)
    assert (cols, rows) == (3, 3) and GRID_PADDING + cols * (1024 + GRID_PADDING) <= 4096
    with pytest.raises(ValueError, match="one shape"):
        reconstruction_grid(np.zeros((2, 4, 4, 3), np.uint8), np.zeros((3, 4, 4, 3), np.uint8), 8)


def test_demo_figure_puts_the_grids_side_by_side_scaled(tmp_path):
    import importlib.util
    spec = importlib.util.spec_from_file_location("quickstart_demo", Path(__file__).parents[2] / "scripts"
                                                  / "quickstart_demo.py")
    demo = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(demo)
    rng = np.random.default_rng(0)
    left, right = rng.integers(0, 256, (10, 6, 3), dtype=np.uint8), rng.integers(0, 256, (4, 5, 3), dtype=np.uint8)
    Image.fromarray(left).save(tmp_path / "a.png")
    Image.fromarray(right).save(tmp_path / "b.png")
    figure = _read(demo.demo_figure([tmp_path / "a.png", tmp_path / "b.png"], tmp_path / "f.png", scale=2))
    gap = demo.FIGURE_GAP
    assert figure.shape == (20, 2 * (6 + gap + 5), 3)
    np.testing.assert_array_equal(figure[::2, ::2][:, :6], left)
    np.testing.assert_array_equal(figure[::2, ::2][:4, 6 + gap:], right)
    assert (figure[::2, ::2][4:, 6 + gap:] == 255).all() and (figure[:, 12:12 + 2 * gap] == 255).all()
