"""FID: the Frechet distance against closed forms, and the image pipeline end to end on a random Inception."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import scipy.linalg

from efficient_vdvae_common import fid

REPO_ROOT = Path(__file__).resolve().parents[2]


def random_covariance(rng: np.random.Generator, dims: int) -> np.ndarray:
    a = rng.normal(size=(dims, dims))
    return a @ a.T + dims * np.eye(dims)


def test_frechet_distance_of_diagonal_gaussians_is_the_closed_form():
    rng = np.random.default_rng(0)
    mu_a, mu_b = rng.normal(size=5), rng.normal(size=5)
    var_a, var_b = rng.uniform(0.5, 2.0, 5), rng.uniform(0.5, 2.0, 5)
    expected = np.sum((mu_a - mu_b) ** 2) + np.sum(var_a + var_b - 2 * np.sqrt(var_a * var_b))
    assert fid.frechet_distance(mu_a, np.diag(var_a), mu_b, np.diag(var_b)) == pytest.approx(expected, rel=1e-9)


def test_frechet_distance_of_full_gaussians_matches_the_symmetric_scipy_form():
    # Tr(S_a + S_b - 2 (S_a^(1/2) S_b S_a^(1/2))^(1/2)): the same distance written through a symmetric matrix.
    rng = np.random.default_rng(1)
    sigma_a, sigma_b = random_covariance(rng, 6), random_covariance(rng, 6)
    mu_a, mu_b = rng.normal(size=6), rng.normal(size=6)
    root_a = scipy.linalg.sqrtm(sigma_a).real
    cross = scipy.linalg.sqrtm(root_a @ sigma_b @ root_a).real
    expected = np.sum((mu_a - mu_b) ** 2) + np.trace(sigma_a + sigma_b - 2 * cross)
    assert fid.frechet_distance(mu_a, sigma_a, mu_b, sigma_b) == pytest.approx(expected, rel=1e-7)
    assert fid.frechet_distance(mu_a, sigma_a, mu_a, sigma_a) == pytest.approx(0.0, abs=1e-6)


def test_feature_statistics_are_mean_and_unbiased_covariance():
    features = np.random.default_rng(2).normal(size=(40, 3))
    mu, sigma = fid.feature_statistics(features)
    np.testing.assert_allclose(mu, features.mean(0))
    centred = features - features.mean(0)
    np.testing.assert_allclose(sigma, centred.T @ centred / 39)


def test_missing_weights_name_the_place_to_put_them(tmp_path):
    with pytest.raises(fid.FIDError, match=r"not found at .*missing\.pth.*" + fid.WEIGHTS_FILE_NAME):
        fid.resolve_weights_path(tmp_path / "missing.pth")


@pytest.fixture(scope="module")
def random_inception_weights(tmp_path_factory) -> Path:
    """The FID Inception architecture with random weights, saved under torch hub's file name."""
    torch = pytest.importorskip("torch")
    from pytorch_fid import inception as fid_inception

    torch.manual_seed(0)
    net = fid_inception._inception_v3(num_classes=1008, aux_logits=False, weights=None)
    net.Mixed_5b = fid_inception.FIDInceptionA(192, pool_features=32)
    net.Mixed_5c = fid_inception.FIDInceptionA(256, pool_features=64)
    net.Mixed_5d = fid_inception.FIDInceptionA(288, pool_features=64)
    net.Mixed_6b = fid_inception.FIDInceptionC(768, channels_7x7=128)
    net.Mixed_6c = fid_inception.FIDInceptionC(768, channels_7x7=160)
    net.Mixed_6d = fid_inception.FIDInceptionC(768, channels_7x7=160)
    net.Mixed_6e = fid_inception.FIDInceptionC(768, channels_7x7=192)
    net.Mixed_7b = fid_inception.FIDInceptionE_1(1280)
    net.Mixed_7c = fid_inception.FIDInceptionE_2(2048)
    hub = tmp_path_factory.mktemp("hub")
    path = hub / "checkpoints" / fid.WEIGHTS_FILE_NAME
    path.parent.mkdir(parents=True)
    torch.save(net.state_dict(), path)
    return path


def write_images(folder: Path, images: np.ndarray) -> None:
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    for i, image in enumerate(images):
        Image.fromarray(image).save(folder / f"image-{i:04d}.png")


@pytest.mark.slow
def test_fid_pipeline_end_to_end_from_torch_hub_cache(random_inception_weights, tmp_path, monkeypatch):
    torch = pytest.importorskip("torch")
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(random_inception_weights.parent.parent))
    assert fid.default_weights_path() == random_inception_weights
    rng = np.random.default_rng(3)
    dark = rng.integers(0, 100, size=(3, 32, 32, 3), dtype=np.uint8)
    bright = rng.integers(150, 256, size=(3, 32, 32, 3), dtype=np.uint8)
    write_images(tmp_path / "dark", dark)
    write_images(tmp_path / "bright", bright)

    model = fid.load_inception()
    # Features of files equal features of the arrays they hold, and a short last batch counts.
    from_files = fid.inception_features(model, fid.read_folder_images(tmp_path / "dark"), batch_size=2)
    from_arrays = fid.inception_features(model, list(dark), batch_size=3)
    assert from_files.shape == (3, fid.FEATURE_DIMS)
    np.testing.assert_allclose(from_files, from_arrays, rtol=1e-4, atol=1e-6)

    # A random network's features are small, so compare the two distances with each other.
    same = fid.fid(list(dark), list(dark), batch_size=3)
    apart = fid.fid(list(dark), list(bright), batch_size=3)
    assert apart > 0 and abs(same) <= 1e-6 * apart


@pytest.mark.slow
def test_fid_command_line(random_inception_weights, tmp_path):
    rng = np.random.default_rng(4)
    write_images(tmp_path / "a", rng.integers(0, 256, size=(2, 16, 16, 3), dtype=np.uint8))
    write_images(tmp_path / "b", rng.integers(0, 256, size=(2, 16, 16), dtype=np.uint8))  # grayscale
    command = [sys.executable, "-m", "efficient_vdvae_common.fid", str(tmp_path / "a"), str(tmp_path / "b")]
    done = subprocess.run([*command, "--inception-weights", str(random_inception_weights)],
                          capture_output=True, text=True, cwd=REPO_ROOT, timeout=300)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("FID ") and float(done.stdout.split()[1]) >= 0

    missing = subprocess.run([*command, "--inception-weights", str(tmp_path / "nope.pth")],
                             capture_output=True, text=True, cwd=REPO_ROOT, timeout=300)
    assert missing.returncode == 2
    assert missing.stderr.count("\n") == 1 and "nope.pth" in missing.stderr and "download" in missing.stderr
