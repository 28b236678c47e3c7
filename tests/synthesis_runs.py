"""The tiny trained runs the synthesis tests share, one per framework (the session fixtures torch_run and
jax_run of tests/conftest.py): real train.py runs on a few random PNGs, two of them in a subfolder."""
from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from tests.helpers import REFERENCE_CONFIG, jax_env

REPO_ROOT = Path(__file__).resolve().parent.parent

TORCH_RUN_NAME = "tiny"
# Latent resolution of each group: levels [2, 4, 4, 8, 8, 16, 16], followers [0, 0, 1, 0, 0, 2, 0].
TORCH_GROUP_RESOLUTIONS = [2, 4, 4, 4, 8, 8, 16, 16, 16, 16]
TORCH_SYNTHESIS_NAMES = ["img_000.png", "img_001.png", "img_002.png", "img_003.png", "more/img_004.png",
                         "more/img_005.png"]

JAX_RUN_NAME = "tiny_jax"
# JAX_TINY_MODEL: levels at 8x8 (one follower) and 16x16: three latent groups of 4 variates.
JAX_GROUP_RESOLUTIONS = [8, 8, 16]
JAX_SYNTHESIS_NAMES = ["a.png", "b.png", "c.png", "d.png", "more/e.png", "more/f.png"]
JAX_NUM_TRAIN_IMAGES = 8


def script_env() -> dict[str, str]:
    # One thread: the test machine's few cores are shared.
    return {**os.environ, "CUDA_VISIBLE_DEVICES": "", "OMP_NUM_THREADS": "1"}


@dataclass
class SynthesisRun:
    framework: str
    name: str  # run.name
    root: Path  # the folder the run lives in (cwd of the scripts)
    images: Path

    @property
    def logs(self) -> Path:
        return self.root / f"logs-{self.name}"

    @property
    def saved_config(self) -> Path:
        return self.logs / f"hparams-{self.name}.cfg"

    def arguments(self, *overrides: str, args: tuple[str, ...] = ()) -> list[str]:
        """synthesize.py arguments for this run (the saved config is read; --set changes [synthesis])."""
        return ["--config", str(REFERENCE_CONFIG), *args, "--set", f"run.name={self.name}", *overrides]

    def synthesize(self, *overrides: str, cwd: Path | None = None, args: tuple[str, ...] = ()
                   ) -> subprocess.CompletedProcess:
        """synthesize.py on this run in a fresh process, from `cwd` (default: the run's folder)."""
        script = REPO_ROOT / f"efficient_vdvae_{self.framework}" / "synthesize.py"
        env, timeout = (script_env(), 300) if self.framework == "torch" else (jax_env(), 600)
        return subprocess.run([sys.executable, str(script), *self.arguments(*overrides, args=args)],
                              cwd=cwd or self.root, env=env, capture_output=True, text=True, timeout=timeout)
