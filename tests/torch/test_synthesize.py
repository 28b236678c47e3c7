"""efficient_vdvae_torch/synthesize.py end to end on a tiny trained run: the four modes, their files and errors.

The torch and JAX files check the same outputs of each mode, and so read alike; they stay two
because each recomputes what a mode wrote from its own framework's internals (the DataLoader and the
EMA module here, the iterator and model.apply there; NCHW here, NHWC there), which is the check.
"""
from __future__ import annotations

import math
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from skimage.metrics import structural_similarity

from efficient_vdvae_common.encodings import read_encodings
from efficient_vdvae_torch.checkpoints import load_checkpoint
from efficient_vdvae_torch.data import create_dataloader
from efficient_vdvae_torch.model import UniversalAutoEncoder, compute_loss
from efficient_vdvae_torch.synthesis import generate, load_synthesis_model, reconstruct, seed_everything
from efficient_vdvae_torch.synthesize import main as synthesize_main
from efficient_vdvae_torch.train_step import eval_step
from hparams import load_config

from tests.helpers import REFERENCE_CONFIG as CONFIG
from tests.synthesis_runs import TORCH_GROUP_RESOLUTIONS as GROUP_RESOLUTIONS
from tests.synthesis_runs import TORCH_RUN_NAME as RUN_NAME
from tests.synthesis_runs import TORCH_SYNTHESIS_NAMES as SYNTHESIS_NAMES

# One torch intra-op thread for the in-process steps (tests/conftest.py: single_torch_thread).
pytestmark = pytest.mark.usefixtures("single_torch_thread")

CPU = torch.device("cpu")
TEMPERATURE_FOLDERS = ["00_T-0.8", "01_T-0.85", "02_T-0.9", "03_T-1", "04_linear-0.7-0.9", "05_linear-0.9-0.7",
                       "06_linear-0.8-1", "07_linear-1-0.8", "08_linear-0.8-0.9"]


def _ok(result) -> str:
    assert result.returncode == 0, f"exit {result.returncode}\n{result.stdout[-2000:]}\n{result.stderr[-3000:]}"
    return result.stdout


def _png(path: Path) -> np.ndarray:
    with Image.open(path) as image:
        assert image.format == "PNG" and image.mode == "RGB" and image.size == (16, 16), path
        return np.asarray(image)


def _ema_model(run, hp) -> UniversalAutoEncoder:
    """The run's EMA weights, loaded without the synthesis code."""
    model = UniversalAutoEncoder(hp)
    model.load_state_dict(load_checkpoint(run.root / f"checkpoints-{RUN_NAME}")["ema_model_state_dict"])
    return model.eval()


def _copy_run(run, destination: Path) -> Path:
    destination.mkdir()
    shutil.copy2(run.root / f"checkpoints-{RUN_NAME}", destination)
    (destination / f"logs-{RUN_NAME}").mkdir()
    shutil.copy2(run.saved_config, destination / f"logs-{RUN_NAME}")
    return destination


def test_reconstruction(torch_run):
    stdout = _ok(torch_run.synthesize("synthesis.synthesis_mode=reconstruction",
                                     "synthesis.save_target_in_reconstruction=True"))
    values = dict(re.findall(r"(NELBO|reconstruction|KL|SSIM) (-?[0-9.]+)", stdout))
    nelbo, recon, kl, ssim = (float(values[key]) for key in ("NELBO", "reconstruction", "KL", "SSIM"))
    assert "| 6 images" in stdout
    assert nelbo == pytest.approx(recon + kl, abs=2e-6)

    folder = torch_run.logs / "synthesis-images" / "reconstructed"
    written = sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*.png"))
    stems = [name[:-4] for name in SYNTHESIS_NAMES]
    assert written == sorted([f"{s}.png" for s in stems] + [f"{s}-target.png" for s in stems])
    ssims = []
    for name, stem in zip(SYNTHESIS_NAMES, stems):
        target = _png(folder / f"{stem}-target.png")
        # 8-bit data: the target written back is the source image, pixel for pixel.
        np.testing.assert_array_equal(target, _png(torch_run.images / "synthesis" / name))
        ssims.append(structural_similarity(target, _png(folder / f"{stem}.png"), channel_axis=2, data_range=255,
                                           gaussian_weights=True, sigma=1.5, use_sample_covariance=False))
    # The script scores unrounded outputs, the PNGs are rounded: close, not equal.
    assert ssim == pytest.approx(np.mean(ssims), abs=0.01)

    # The evaluation objective on all 6 images at once (other latent noise, hence the tolerance).
    hp = load_config(torch_run.saved_config)
    x = next(iter(create_dataloader(hp, "synthesis", batch_size=6, num_workers=0)))
    torch.manual_seed(0)
    assert nelbo == pytest.approx(eval_step(hp, _ema_model(torch_run, hp), x)["nelbo"], rel=2e-3)


def test_reconstruction_metrics_are_means_over_images(torch_run, tmp_path):
    """Batches of 4 and 2: sums over images / 6, not the mean of the two batch means.
    Posterior means (temperature 0) make the objective deterministic."""
    hp = load_config(torch_run.saved_config, overrides=("synthesis.batch_size=4",))
    model = load_synthesis_model(hp, CPU, torch_run.root)
    metrics = reconstruct(hp, model, CPU, tmp_path, posterior_temperature=0.0)

    x = next(iter(create_dataloader(hp, "synthesis", batch_size=6, num_workers=0)))
    with torch.no_grad():
        whole = compute_loss(hp, x, *_ema_model(torch_run, hp)(x, posterior_temperature=0.0), step=None)
    assert metrics.num_images == 6
    assert metrics.nelbo == pytest.approx(whole.nelbo.item(), rel=1e-6)
    assert metrics.kl_div == pytest.approx(whole.kl_div.item(), rel=1e-5)

    # Masks: all on changes nothing; all off replaces every z by a prior sample.
    all_on = reconstruct(hp, model, CPU, tmp_path, masks=np.ones((10, 4), bool), posterior_temperature=0.0)
    assert all_on.nelbo == pytest.approx(metrics.nelbo, rel=1e-6)
    all_off = reconstruct(hp, model, CPU, tmp_path, masks=np.zeros((10, 4), bool), posterior_temperature=0.0)
    assert metrics.kl_div > 1e-6 and all_off.kl_div == 0.0  # pruned variates carry no KL


def test_generation(torch_run):
    stdout = _ok(torch_run.synthesize("synthesis.synthesis_mode=generation"))
    assert "8 images for each of 9 temperature settings" in stdout
    folder = torch_run.logs / "synthesis-images" / "generated"
    assert sorted(p.name for p in folder.iterdir()) == TEMPERATURE_FOLDERS
    for setting in TEMPERATURE_FOLDERS:
        names = sorted(p.name for p in (folder / setting).iterdir())
        assert names == [f"image-{i:04d}.png" for i in range(8)]  # 2 batches of 4
        images = [_png(folder / setting / name) for name in names]
        assert not np.array_equal(images[0], images[1])


def test_generation_follows_the_seed(torch_run, tmp_path):
    """run.seed alone decides (per-image generators): the global RNG's state does not matter."""
    outputs = []
    for seed, folder in ((1, "a"), (1, "b"), (2, "c")):
        hp = load_config(torch_run.saved_config, overrides=("synthesis.temperature_settings=[0.9]",
                                                           "synthesis.n_generation_batches=1", f"run.seed={seed}"))
        model = load_synthesis_model(hp, CPU, torch_run.root)
        seed_everything(len(folder) + ord(folder))  # another global state every time
        [written] = generate(hp, model, CPU, tmp_path / folder)
        outputs.append([path.read_bytes() for path in sorted(written.iterdir())])
    assert outputs[0] == outputs[1]
    assert outputs[0] != outputs[2]


def test_div_stats(torch_run):
    stdout = _ok(torch_run.synthesize("synthesis.synthesis_mode=div_stats"))
    assert re.search(r"div_stats \(10 groups x 4 variates\): \d+/10 active groups", stdout)
    # Issue 9 item 3: the originals' location.
    div_stats = np.load(torch_run.logs / "latents" / "div_stats.npy", allow_pickle=False)
    assert f"wrote logs-{RUN_NAME}/latents/div_stats.npy" in stdout
    assert not (torch_run.logs / "div_stats.npy").exists()
    assert div_stats.shape == (10, 4) and div_stats.dtype == np.float32
    assert np.all(div_stats >= -1e-6)

    # Group 0 sees no sampled latent: its KL is exact. Closed form in numpy over the 6 images at once
    # (the script ran batches of 4 and 2).
    hp = load_config(torch_run.saved_config)
    x = next(iter(create_dataloader(hp, "div_stats", batch_size=6, num_workers=0)))
    assert len(x) == 6
    with torch.no_grad():
        _, posterior, prior = _ema_model(torch_run, hp)(x)
    mu_p, sd_p = (t.double().numpy() for t in posterior[0])
    mu_q, sd_q = (t.double().numpy() for t in prior[0])
    kl = np.log(sd_q / sd_p) + (sd_p ** 2 + (mu_p - mu_q) ** 2) / (2 * sd_q ** 2) - 0.5
    np.testing.assert_allclose(div_stats[0], kl.mean(axis=(0, 2, 3)) / math.log(2), rtol=1e-4, atol=1e-7)


def test_encoding(torch_run, tmp_path, monkeypatch, capsys):
    root = _copy_run(torch_run, tmp_path / "run")
    # Without div_stats: one line naming the file, exit 2, nothing written (in-process: saves a start-up).
    monkeypatch.chdir(root)
    assert synthesize_main(["--config", str(CONFIG), "--set", f"run.name={RUN_NAME}",
                            "synthesis.synthesis_mode=encoding"]) == 2
    stderr = capsys.readouterr().err
    # Besides notes (the saved run's configuration is used), one error line naming the file.
    problems = [line for line in stderr.splitlines() if not line.startswith("note:")]
    assert len(problems) == 1 and f"logs-{RUN_NAME}/latents/div_stats.npy" in problems[0]
    assert not (root / f"logs-{RUN_NAME}" / "latents").exists()

    # quantile 0.1 of 40 entries: the threshold is 0, so exactly the three non-zero variates are on.
    div_stats = np.zeros((10, 4), dtype=np.float32)
    div_stats[3, [1, 2]] = 1.0
    div_stats[7, 0] = 2.0
    # Written where earlier versions put it (logs-<name>/div_stats.npy): still read, with a note.
    np.save(root / f"logs-{RUN_NAME}" / "div_stats.npy", div_stats)
    stdout = _ok(torch_run.synthesize("synthesis.synthesis_mode=encoding", "synthesis.variate_masks_quantile=0.1",
                                     cwd=root))
    assert f"note: reading div_stats from logs-{RUN_NAME}/div_stats.npy" in stdout

    encodings = read_encodings(root / f"logs-{RUN_NAME}" / "latents" / "encodings.npz")
    assert encodings.file_names == [f"img_{i:03d}.png" for i in range(12)]
    assert sorted(encodings.groups) == [3, 7]
    assert encodings.groups[3].variates.tolist() == [1, 2]
    assert encodings.groups[7].variates.tolist() == [0]
    for g, active in ((3, 2), (7, 1)):
        posterior = encodings.groups[g].posterior
        size = GROUP_RESOLUTIONS[g]
        assert posterior.shape == (12, size, size, active, 2)
        assert np.all(np.isfinite(posterior)) and np.all(posterior[..., 1] > 0)


def test_missing_checkpoint_is_one_line(torch_run, tmp_path):
    result = torch_run.synthesize("synthesis.synthesis_mode=generation", cwd=tmp_path)
    assert result.returncode == 2
    assert result.stderr.startswith("error: no checkpoint checkpoints-tiny") and result.stderr.count("\n") == 1
    assert list(tmp_path.iterdir()) == []
