"""FID of generation mode's samples against the synthesis set (synthesis.compute_fid; SPEC.md section 8).

Both frameworks call `fid_weights(hp)` before generating (missing weights: one
FIDError, nothing generated) and `write_generation_fids` after, with the
synthesis set's images as uint8 (the same mapping as the written PNGs). The
Inception network and the reference statistics are computed once; every
temperature setting's folder is scored against them. Results are printed and
written to `synthesis-images/generated/fid.json`:

    {"reference": "<synthesis_data_path>", "num_reference_images": N,
     "fid": {"00_T-0.8": 123.4, ...}, "num_images": {"00_T-0.8": 64, ...}}

FID on few images is biased upwards (the covariance of 2048 features needs
thousands); compare numbers computed on the same counts only.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np

from efficient_vdvae_common.atomic_files import atomic_binary_file
from efficient_vdvae_common.synthesis_files import generation_dir, temperature_folder_name

FID_RESULTS_FILENAME = "fid.json"


def fid_weights(hp: Any) -> Path | None:
    """The Inception weights file when synthesis.compute_fid (FIDError when missing), else None."""
    if not hp.synthesis.compute_fid or hp.synthesis.synthesis_mode != "generation":
        return None
    from efficient_vdvae_common.fid import resolve_weights_path

    return resolve_weights_path(hp.synthesis.inception_weights or None)


def generated_folders(hp: Any, run_logs: str | Path) -> list[Path]:
    """The folders generation mode wrote, one per temperature setting."""
    return [generation_dir(run_logs) / temperature_folder_name(index, setting)
            for index, setting in enumerate(hp.synthesis.temperature_settings)]


def write_generation_fids(hp: Any, weights: Path, folders: Sequence[Path], reference_images: Iterable[np.ndarray],
                          device: str = "cpu") -> dict[str, float]:
    """FID of every folder's PNGs against `reference_images`; printed, and written next to the folders."""
    from efficient_vdvae_common.fid import (feature_statistics, frechet_distance, inception_features,
                                            load_inception, read_folder_images)

    batch_size = hp.synthesis.batch_size
    model = load_inception(weights, device)
    reference = inception_features(model, reference_images, batch_size, device)
    reference_stats = feature_statistics(reference)
    values, counts = {}, {}
    for folder in folders:
        features = inception_features(model, read_folder_images(folder), batch_size, device)
        values[folder.name] = frechet_distance(*feature_statistics(features), *reference_stats)
        counts[folder.name] = len(features)
        print(f"FID {folder.name}: {values[folder.name]:.4f} ({len(features)} samples vs "
              f"{len(reference)} synthesis images)", flush=True)
    results = {"reference": str(hp.data.synthesis_data_path), "num_reference_images": len(reference),
               "fid": values, "num_images": counts}
    path = Path(folders[0]).parent / FID_RESULTS_FILENAME
    with atomic_binary_file(path) as stream:
        stream.write((json.dumps(results, indent=2) + "\n").encode())
    print(f"wrote {path}", flush=True)
    return values
