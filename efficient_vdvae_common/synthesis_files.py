"""Where the inference modes write and what they print, shared by both frameworks (SPEC.md sections 8, 9).

Everything lives in the run's `logs-<name>/` folder:

- `synthesis-images/reconstructed/<image stem>.png` (and `<stem>-target.png`),
- `synthesis-images/generated/<NN>_<setting>/image-0000.png`, ...,
- `latents/div_stats.npy` (the originals' location; earlier versions of this
  project wrote `div_stats.npy` directly in `logs-<name>/`, still read),
- `latents/encodings.npz`,
- `synthesis-images/decoded/<NN>_<setting>/<image stem>.png` (decoding mode,
  efficient_vdvae_common.latent_decoding).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from efficient_vdvae_common.atomic_files import staged_folder
from efficient_vdvae_common.data.readers import IMAGE_EXTENSIONS
from efficient_vdvae_common.encodings import ENCODINGS_FILENAME, Encodings, write_encodings
from efficient_vdvae_common.image_grids import ReconstructionGrid, reconstruction_grid_path
from efficient_vdvae_common.images import write_png
from efficient_vdvae_common.variate_masks import DIV_STATS_FILENAME, load_div_stats, save_div_stats, variate_masks


def reconstruction_dir(run_logs: str | Path) -> Path:
    return Path(run_logs) / "synthesis-images" / "reconstructed"


def generation_dir(run_logs: str | Path) -> Path:
    return Path(run_logs) / "synthesis-images" / "generated"


def latents_dir(run_logs: str | Path) -> Path:
    return Path(run_logs) / "latents"


def div_stats_path(run_logs: str | Path) -> Path:
    """Where div_stats is written: `logs-<name>/latents/div_stats.npy`, as in the originals."""
    return latents_dir(run_logs) / DIV_STATS_FILENAME


def legacy_div_stats_path(run_logs: str | Path) -> Path:
    """Where earlier versions of this project wrote div_stats (`logs-<name>/div_stats.npy`)."""
    return Path(run_logs) / DIV_STATS_FILENAME


def load_run_div_stats(run_logs: str | Path, num_groups: int, num_variates: int) -> np.ndarray:
    """The run's div_stats from `latents/div_stats.npy`, else from the earlier location (with a note).

    A missing file raises DivStatsError naming the current location.
    """
    path, legacy = div_stats_path(run_logs), legacy_div_stats_path(run_logs)
    if not path.is_file() and legacy.is_file():
        print(f"note: reading div_stats from {legacy} (an earlier version's location; "
              f"div_stats mode now writes {path})", flush=True)
        path = legacy
    return load_div_stats(path, num_groups, num_variates)


def encodings_path(run_logs: str | Path) -> Path:
    return latents_dir(run_logs) / ENCODINGS_FILENAME


def image_stem(name: str) -> str:
    """A data set name without its image extension (array-file names have none)."""
    path = Path(name)
    return path.with_suffix("").as_posix() if path.suffix.lower() in IMAGE_EXTENSIONS else name


class ReconstructionFiles:
    """The files of a reconstruction run (written by the main process): `<stem>.png` per image, its
    `<stem>-target.png` when `save_targets`, and the grid of the first targets above their reconstructions."""

    def __init__(self, output_dir: str | Path, save_targets: bool):
        self.output_dir = Path(output_dir)
        self.save_targets = save_targets
        self.grid = ReconstructionGrid(reconstruction_grid_path(output_dir))

    def add(self, names: Sequence[str], targets: np.ndarray, reconstructions: np.ndarray) -> None:
        """One batch: uint8 HWC images, row i of both arrays is the image `names[i]`."""
        self.grid.add(targets, reconstructions)
        for name, reconstruction, target in zip(names, reconstructions, targets):
            stem = image_stem(name)
            write_png(self.output_dir / f"{stem}.png", reconstruction)
            if self.save_targets:
                write_png(self.output_dir / f"{stem}-target.png", target)

    def write_grid(self) -> Path | None:
        return self.grid.write()


def generated_image_name(index: int) -> str:
    return f"image-{index:04d}.png"


def temperature_folder_name(index: int, setting: Any) -> str:
    """A readable folder name per temperature_settings entry, e.g. `00_T-0.8`, `04_linear-0.7-0.9`."""
    if isinstance(setting, tuple):
        label = "-".join([str(setting[0])] + [f"{float(t):g}" for t in setting[1:]])
    elif isinstance(setting, list):
        label = "list-" + "-".join(f"{float(t):g}" for t in setting)
    else:
        label = f"T-{float(setting):g}"
    return f"{index:02d}_{label}"


@dataclass
class ReconstructionMetrics:
    """Means over the synthesis set (sums over images / image count), in report units
    (bits/dim; nats per image for binarized_mnist). `ssim` is None for binarized_mnist;
    `iw_nll` (the importance-weighted bound with `num_importance_samples` samples) is None for K = 1,
    where the bound is the NELBO itself."""

    nelbo: float
    recon: float
    kl_div: float
    ssim: float | None
    num_images: int
    iw_nll: float | None = None
    num_importance_samples: int = 1

    def summary(self) -> str:
        ssim = "" if self.ssim is None else f" | SSIM {self.ssim:.6f}"
        iw = "" if self.iw_nll is None else f" | IW-NLL (K={self.num_importance_samples}) {self.iw_nll:.6f}"
        return (f"NELBO {self.nelbo:.6f}{iw} | reconstruction {self.recon:.6f} | KL {self.kl_div:.6f}{ssim}"
                f" | {self.num_images} images")


def div_stats_summary(hp: Any, div_stats: np.ndarray) -> str:
    """Active groups (mean KL per latent dim >= metrics.latent_active_threshold) and the masks' share."""
    groups, variates = div_stats.shape
    masks = variate_masks(div_stats, hp.synthesis.variate_masks_quantile)
    active = int(np.sum(div_stats.mean(axis=1) >= hp.metrics.latent_active_threshold))
    masked_groups = [g for g in range(groups) if masks[g].any()]
    return (f"div_stats ({groups} groups x {variates} variates): {active}/{groups} active groups; "
            f"{int(masks.sum())}/{masks.size} variates ({masks.mean():.2%}) above the "
            f"{1 - hp.synthesis.variate_masks_quantile:g} quantile, in groups {masked_groups}")


def needs_variate_masks(hp: Any) -> bool:
    """Encoding, and reconstruction with mask_reconstruction, keep only the div_stats-selected variates."""
    mode = hp.synthesis.synthesis_mode
    return mode == "encoding" or (mode == "reconstruction" and hp.synthesis.mask_reconstruction)


def run_mode(
    hp: Any,
    run_logs: str | Path,
    masks: Sequence[np.ndarray] | None,
    *,
    reconstruct: Callable[[Path, Sequence[np.ndarray] | None], ReconstructionMetrics],
    generate: Callable[[Path], list[Path]],
    compute_div_stats: Callable[[], np.ndarray],
    encode: Callable[[Sequence[np.ndarray]], Encodings],
    decode: Callable[[Path], list[Path]] | None = None,
    main_process: bool = True,
) -> None:
    """Run `synthesis.synthesis_mode` with one framework's mode functions; write and report the outputs.

    Several processes (devices, ranks) all call it; the others (`main_process` False) compute their share
    and write and print nothing: their mode functions get no output folder (None).
    """
    mode = hp.synthesis.synthesis_mode
    if not main_process:
        if mode == "reconstruction":
            reconstruct(None, masks)
        elif mode == "generation":
            generate(None)
        elif mode == "decoding":
            decode(None)
        elif mode == "div_stats":
            compute_div_stats()
        else:
            encode(masks)
        return
    if mode == "reconstruction":
        # Images (and grids) are staged and moved into place at the end: a broken batch leaves no new file.
        with staged_folder(run_logs) as staging:
            metrics = reconstruct(reconstruction_dir(staging), masks)
        print(metrics.summary(), flush=True)
    elif mode == "generation":
        output_dir = generation_dir(run_logs)
        with staged_folder(run_logs) as staging:
            folders = generate(generation_dir(staging))
        print(f"wrote {hp.synthesis.n_generation_batches * hp.synthesis.batch_size} images for each of "
              f"{len(folders)} temperature settings under {output_dir}", flush=True)
    elif mode == "decoding":
        # latent_decoding builds on this module: imported here, not at the top.
        from efficient_vdvae_common.latent_decoding import decoding_dir, decoding_encodings_path

        output_dir = decoding_dir(run_logs)
        with staged_folder(run_logs) as staging:
            folders = decode(decoding_dir(staging))
        print(f"decoded {decoding_encodings_path(hp, run_logs)} for each of {len(folders)} temperature "
              f"settings under {output_dir}", flush=True)
    elif mode == "div_stats":
        div_stats = compute_div_stats()
        save_div_stats(div_stats_path(run_logs), div_stats)
        print(div_stats_summary(hp, div_stats), flush=True)
        print(f"wrote {div_stats_path(run_logs)}", flush=True)
    else:
        encodings = encode(masks)
        path = encodings_path(run_logs)
        write_encodings(path, encodings)
        print(f"wrote {path}: {len(encodings.file_names)} images, groups {sorted(encodings.groups)}", flush=True)
