"""efficient_vdvae_jax/synthesize.py on a tiny trained JAX run: the four modes, their files and errors.

The torch and JAX files check the same outputs of each mode, and so read alike; they stay two
because each recomputes what a mode wrote from its own framework's internals (the DataLoader and the
EMA module here, the iterator and model.apply there; NCHW here, NHWC there), which is the check.
"""
from __future__ import annotations

import math
import re
import shutil
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image
from skimage.metrics import structural_similarity

from efficient_vdvae_common.encodings import read_encodings
from efficient_vdvae_jax.data import create_iterator
from efficient_vdvae_jax.model import UniversalAutoEncoder
from efficient_vdvae_jax.synthesis import load_synthesis_params
from efficient_vdvae_jax.synthesize import main as synthesize_main
from hparams import load_config

from tests.synthesis_runs import JAX_GROUP_RESOLUTIONS as GROUP_RESOLUTIONS
from tests.synthesis_runs import JAX_NUM_TRAIN_IMAGES as NUM_TRAIN_IMAGES
from tests.synthesis_runs import JAX_RUN_NAME as RUN_NAME
from tests.synthesis_runs import JAX_SYNTHESIS_NAMES as SYNTHESIS_NAMES

SUMMARY = re.compile(r"(NELBO|reconstruction|KL|SSIM) (-?[0-9.]+)")


def _synthesize(run, root: Path, monkeypatch, capsys, *overrides: str) -> tuple[int, str, str]:
    """synthesize.main() from `root` (in-process: no second JAX start-up); (exit code, stdout, stderr)."""
    monkeypatch.chdir(root)
    code = synthesize_main(run.arguments(*overrides))
    out = capsys.readouterr()
    return code, out.out, out.err


def _png(path: Path) -> np.ndarray:
    with Image.open(path) as image:
        assert image.format == "PNG" and image.mode == "RGB" and image.size == (16, 16), path
        return np.asarray(image)


def _copy_run(run, destination: Path) -> Path:
    """The run's checkpoints and saved config, without any synthesis output."""
    shutil.copytree(run.root / f"checkpoints-{RUN_NAME}", destination / f"checkpoints-{RUN_NAME}")
    (destination / f"logs-{RUN_NAME}").mkdir()
    shutil.copy2(run.saved_config, destination / f"logs-{RUN_NAME}")
    return destination


def test_reconstruction(jax_run, monkeypatch, capsys):
    code, stdout, stderr = _synthesize(jax_run, jax_run.root, monkeypatch, capsys,
                                       "synthesis.synthesis_mode=reconstruction",
                                       "synthesis.save_target_in_reconstruction=True")
    assert code == 0, stderr
    values = dict(SUMMARY.findall(stdout))
    nelbo, recon, kl, ssim = (float(values[key]) for key in ("NELBO", "reconstruction", "KL", "SSIM"))
    assert "| 6 images" in stdout
    assert nelbo == pytest.approx(recon + kl, abs=2e-6)
    assert 0 < kl < nelbo

    folder = jax_run.logs / "synthesis-images" / "reconstructed"
    stems = [name[:-4] for name in SYNTHESIS_NAMES]
    written = sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*.png"))
    assert written == sorted([f"{s}.png" for s in stems] + [f"{s}-target.png" for s in stems])
    ssims = []
    for name, stem in zip(SYNTHESIS_NAMES, stems):
        target = _png(folder / f"{stem}-target.png")
        # 8-bit data: the target written back is the source image, pixel for pixel.
        np.testing.assert_array_equal(target, _png(jax_run.images / "synthesis" / name))
        ssims.append(structural_similarity(target, _png(folder / f"{stem}.png"), channel_axis=2, data_range=255,
                                           gaussian_weights=True, sigma=1.5, use_sample_covariance=False))
    # The script scores unrounded outputs, the PNGs are rounded: close, not equal.
    assert ssim == pytest.approx(np.mean(ssims), abs=0.01)


def test_generation(jax_run, monkeypatch, capsys):
    code, stdout, stderr = _synthesize(jax_run, jax_run.root, monkeypatch, capsys,
                                       "synthesis.synthesis_mode=generation")
    assert code == 0, stderr
    assert "8 images for each of 2 temperature settings" in stdout
    folder = jax_run.logs / "synthesis-images" / "generated"
    assert sorted(p.name for p in folder.iterdir()) == ["00_T-0.8", "01_linear-0.7-0.9"]
    for setting in ("00_T-0.8", "01_linear-0.7-0.9"):
        names = sorted(p.name for p in (folder / setting).iterdir())
        assert names == [f"image-{i:04d}.png" for i in range(8)]  # 2 batches of 4
        images = [_png(folder / setting / name) for name in names]
        assert not np.array_equal(images[0], images[1])


@pytest.mark.slow
def test_generation_follows_the_seed(jax_run, tmp_path, monkeypatch, capsys):
    """The same run.seed writes the same files, another seed others."""
    root = _copy_run(jax_run, tmp_path)
    folder = root / f"logs-{RUN_NAME}" / "synthesis-images" / "generated" / "00_T-0.8"
    first = None
    seed = load_config(jax_run.saved_config).run.seed
    for run_seed, same in ((seed, True), (seed, True), (seed + 1, False)):
        code, _, stderr = _synthesize(jax_run, root, monkeypatch, capsys, "synthesis.synthesis_mode=generation",
                                      "synthesis.n_generation_batches=1", f"run.seed={run_seed}")
        assert code == 0, stderr
        written = [path.read_bytes() for path in sorted(folder.iterdir())]
        first = first or written
        assert (written == first) is same


def test_div_stats(jax_run, monkeypatch, capsys):
    code, stdout, stderr = _synthesize(jax_run, jax_run.root, monkeypatch, capsys,
                                       "synthesis.synthesis_mode=div_stats")
    assert code == 0, stderr
    assert re.search(r"div_stats \(3 groups x 4 variates\): \d/3 active groups", stdout)
    # Issue 9 item 3: the originals' location.
    div_stats = np.load(jax_run.logs / "latents" / "div_stats.npy", allow_pickle=False)
    assert f"wrote logs-{RUN_NAME}/latents/div_stats.npy" in stdout
    assert not (jax_run.logs / "div_stats.npy").exists()
    assert div_stats.shape == (3, 4) and div_stats.dtype == np.float32
    assert np.all(div_stats >= -1e-6)

    # Group 0 sees no sampled latent: its KL is exact. Closed form in numpy over the 4 images at once
    # (the script ran one padded batch of 4).
    hp = load_config(jax_run.saved_config)
    batches = list(create_iterator(hp, "div_stats", num_devices=1, batch_size=8, with_mask=True))
    [(x, mask)] = batches
    x = x[0][mask[0]]
    assert len(x) == NUM_TRAIN_IMAGES // 2
    model = UniversalAutoEncoder(hp)
    _, posterior, prior = model.apply({"params": load_synthesis_params(hp, model, jax_run.root)},
                                      jax.random.PRNGKey(0), jnp.asarray(x))
    mu_p, sd_p = (np.asarray(t, np.float64) for t in posterior[0])
    mu_q, sd_q = (np.asarray(t, np.float64) for t in prior[0])
    kl = np.log(sd_q / sd_p) + (sd_p ** 2 + (mu_p - mu_q) ** 2) / (2 * sd_q ** 2) - 0.5
    np.testing.assert_allclose(div_stats[0], kl.mean(axis=(0, 1, 2)) / math.log(2), rtol=1e-4, atol=1e-7)


def test_encoding(jax_run, tmp_path, monkeypatch, capsys):
    root = _copy_run(jax_run, tmp_path)
    # Without div_stats: one line naming the file, exit 2, nothing written.
    code, _, stderr = _synthesize(jax_run, root, monkeypatch, capsys, "synthesis.synthesis_mode=encoding")
    assert code == 2
    # Besides notes (the saved run's configuration is used), one error line naming the file.
    problems = [line for line in stderr.splitlines() if not line.startswith("note:")]
    assert len(problems) == 1 and f"logs-{RUN_NAME}/latents/div_stats.npy" in problems[0]
    assert not (root / f"logs-{RUN_NAME}" / "latents").exists()

    # quantile 0.25 of 12 entries: the threshold is 0, so exactly the three non-zero variates are on.
    div_stats = np.zeros((3, 4), dtype=np.float32)
    div_stats[0, [1, 3]] = 1.0
    div_stats[2, 0] = 2.0
    (root / f"logs-{RUN_NAME}" / "latents").mkdir()
    np.save(root / f"logs-{RUN_NAME}" / "latents" / "div_stats.npy", div_stats)
    code, stdout, stderr = _synthesize(jax_run, root, monkeypatch, capsys, "synthesis.synthesis_mode=encoding",
                                       "synthesis.variate_masks_quantile=0.25")
    assert code == 0, stderr
    assert "note:" not in stdout
    assert "8 images, groups [0, 2]" in stdout

    encodings = read_encodings(root / f"logs-{RUN_NAME}" / "latents" / "encodings.npz")
    assert encodings.file_names == [f"{i:03d}.png" for i in range(NUM_TRAIN_IMAGES)]
    assert sorted(encodings.groups) == [0, 2]
    assert encodings.groups[0].variates.tolist() == [1, 3]
    assert encodings.groups[2].variates.tolist() == [0]
    for g, active in ((0, 2), (2, 1)):
        posterior = encodings.groups[g].posterior
        size = GROUP_RESOLUTIONS[g]
        assert posterior.shape == (NUM_TRAIN_IMAGES, size, size, active, 2)
        assert np.all(np.isfinite(posterior)) and np.all(posterior[..., 1] > 0)

    # Group 0 depends on the image only: its stored (mean, std) are the model's posterior, variates 1 and 3.
    hp = load_config(jax_run.saved_config)
    x = np.stack([np.asarray(Image.open(jax_run.images / "train" / name), np.float32) / 127.5 - 1.0
                  for name in encodings.file_names])
    model = UniversalAutoEncoder(hp)
    _, posterior, _ = model.apply({"params": load_synthesis_params(hp, model, jax_run.root)},
                                  jax.random.PRNGKey(0), jnp.asarray(x))
    mean, std = (np.asarray(t) for t in posterior[0])  # 'std' distribution base
    np.testing.assert_allclose(encodings.groups[0].posterior[..., 0], mean[..., [1, 3]], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(encodings.groups[0].posterior[..., 1], std[..., [1, 3]], rtol=1e-5, atol=1e-6)


def test_missing_checkpoint_is_one_line(jax_run, tmp_path):
    result = jax_run.synthesize("synthesis.synthesis_mode=generation", cwd=tmp_path)
    assert result.returncode == 2, result.stderr
    assert result.stderr.startswith("error: no checkpoint in ") and result.stderr.count("\n") == 1
    assert list(tmp_path.iterdir()) == []

