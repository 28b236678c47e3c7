"""Each implementation folder keeps the hparams.cfg its users expect; the two copies must not drift."""
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]


def test_torch_and_jax_hparams_cfg_are_identical():
    torch_cfg = (REPO_ROOT / "efficient_vdvae_torch" / "hparams.cfg").read_text()
    jax_cfg = (REPO_ROOT / "efficient_vdvae_jax" / "hparams.cfg").read_text()
    assert torch_cfg == jax_cfg, "edit both hparams.cfg files together (efficient_vdvae_torch/ and efficient_vdvae_jax/)"
