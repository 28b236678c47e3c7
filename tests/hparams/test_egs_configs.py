"""The example configurations: the 20 published ones match the original's
values exactly (types included), the default hparams.cfg of each
implementation is the commented cifar10_baseline, and the quick-start config
fits a run of a few hundred updates."""
from __future__ import annotations

import json
import math
import re
from pathlib import Path

import pytest

from hparams import load_config
from hparams.evaluator import evaluate_value
from hparams.reader import read_file
from hparams.schema import SCHEMA

REPO_ROOT = Path(__file__).resolve().parents[2]
EGS_DIR = REPO_ROOT / "egs"
EGS_VALUES = json.loads((REPO_ROOT / "tests" / "fixtures" / "egs_values.json").read_text())
PUBLISHED_NAMES = sorted(EGS_VALUES)
DEFAULT_CONFIGS = [
    REPO_ROOT / "efficient_vdvae_torch" / "hparams.cfg",
    REPO_ROOT / "efficient_vdvae_jax" / "hparams.cfg",
]
# Keys this project added to the original's, with their defaults.
PROJECT_KEYS = {
    ("run", "mixed_precision"): False,
    ("run", "compile"): False,
    ("run", "channels_last"): False,
    ("run", "gradient_checkpointing"): False,
    ("data", "skip_corrupt_images"): False,
    ("data", "download_dir"): "../datasets",
    ("data", "full_test_set"): False,
    ("synthesis", "output_sampling"): "sample",
}


def decode(value):
    """egs_values.json writes a tuple as {"tuple": [...]}."""
    if isinstance(value, dict) and set(value) == {"tuple"}:
        return tuple(decode(item) for item in value["tuple"])
    if isinstance(value, list):
        return [decode(item) for item in value]
    return value


def identical(a, b) -> bool:
    """Equal values of the same types all the way down (True is not 1, 8. is not 8, () is not [])."""
    if type(a) is not type(b):
        return False
    if isinstance(a, (list, tuple)):
        return len(a) == len(b) and all(identical(x, y) for x, y in zip(a, b))
    return a == b


def assert_values_match(loaded: dict, expected: dict, label: str) -> None:
    mismatches = [
        f"{section}.{key}: got {loaded[section][key]!r}, expected {decode(value)!r}"
        for section, keys in expected.items()
        for key, value in keys.items()
        if not identical(loaded[section][key], decode(value))
    ]
    assert not mismatches, f"{label}:\n" + "\n".join(mismatches)


def written_values(path: Path) -> dict[str, dict]:
    """What a file itself says, per section: no defaults, no type normalisation."""
    return {
        section: {key: evaluate_value(entry.text) for key, entry in entries.items()}
        for section, entries in read_file(path).sections.items()
    }


def written_keys(path: Path) -> dict[str, set[str]]:
    return {section: set(values) for section, values in written_values(path).items()}


@pytest.mark.parametrize("name", PUBLISHED_NAMES)
def test_published_config_matches_original_values(name):
    path = EGS_DIR / f"{name}.cfg"
    expected = EGS_VALUES[name]

    # What the code sees, and what the file says literally (the loader
    # normalises 8 to 8. and [1, 1] to (1, 1); the file must not need it).
    assert_values_match(load_config(path).to_dict(), expected, str(path))
    assert_values_match(written_values(path), expected, f"{path} (as written)")
    # Exactly the published keys, none of the project's optional ones.
    assert written_keys(path) == {section: set(keys) for section, keys in expected.items()}


@pytest.mark.parametrize("path", DEFAULT_CONFIGS, ids=lambda p: p.parent.name)
def test_default_config_is_the_cifar10_baseline_with_every_key_spelled_out(path):
    loaded = load_config(path).to_dict()

    assert_values_match(loaded, EGS_VALUES["cifar10_baseline"], str(path))
    assert_values_match(written_values(path), EGS_VALUES["cifar10_baseline"], f"{path} (as written)")
    for (section, key), default in PROJECT_KEYS.items():
        assert identical(loaded[section][key], default), f"{section}.{key}"
    # Users read this file to learn every setting, the project's additions included.
    assert written_keys(path) == {section: set(keys) for section, keys in SCHEMA.items()}


def test_both_implementations_ship_the_same_default_config():
    """Byte for byte (line endings, trailing spaces, encoding): users diff and copy these files."""
    torch_bytes, jax_bytes = (path.read_bytes() for path in DEFAULT_CONFIGS)
    assert torch_bytes == jax_bytes


def test_egs_folder_holds_the_published_configs_and_the_quickstart():
    shipped = {path.stem for path in EGS_DIR.glob("*.cfg")}
    assert shipped == set(PUBLISHED_NAMES) | {"quickstart"}


def test_egs_readme_has_a_row_for_every_config():
    readme = (EGS_DIR / "README.md").read_text()
    missing = [name for name in PUBLISHED_NAMES + ["quickstart"] if f"[{name}]({name}.cfg)" not in readme]
    assert not missing, f"egs/README.md lacks rows for {missing}"


def readme_parameter_counts() -> dict[str, str]:
    """config name -> its 'parameters' cell in egs/README.md."""
    lines = (EGS_DIR / "README.md").read_text().splitlines()
    header = next(line for line in lines if line.startswith("| config |"))
    column = [cell.strip() for cell in header.strip("|").split("|")].index("parameters")
    counts = {}
    for line in lines:
        match = re.match(r"\| \[(\w+)\]\(\1\.cfg\) \|", line)
        if match:
            counts[match.group(1)] = [cell.strip() for cell in line.strip("|").split("|")][column]
    return counts


def parameter_count(path: Path) -> int:
    """Parameters of the PyTorch model of a config, built on the meta device (no memory, no compute)."""
    import torch

    from efficient_vdvae_torch.model import UniversalAutoEncoder

    with torch.device("meta"):
        model = UniversalAutoEncoder(load_config(path))
    return sum(parameter.numel() for parameter in model.parameters())


@pytest.mark.parametrize("name", PUBLISHED_NAMES + ["quickstart"])
def test_readme_parameter_count_is_the_models(name):
    count = parameter_count(EGS_DIR / f"{name}.cfg")
    expected = f"{count / 1e6:.1f}M" if count >= 1e6 else f"{count / 1e3:.0f}k"
    assert readme_parameter_counts()[name] == expected


def linear_beta(step: int, start: int, steps: int, beta_min: float) -> float:
    """SPEC section 5 'Linear' KL warm-up (denominator start + steps, as in the originals)."""
    return min(max((step - start) / (start + steps), beta_min), 1.0)


@pytest.fixture(scope="module")
def quickstart():
    return load_config(EGS_DIR / "quickstart.cfg")


class TestQuickstart:
    def test_reads_the_sample_dataset_on_one_device(self, quickstart):
        hp = quickstart
        assert hp.run.name == "quickstart"
        assert hp.run.num_gpus == 1
        assert hp.data.dataset_source == "custom"
        assert (hp.data.train_data_path, hp.data.val_data_path, hp.data.synthesis_data_path) == (
            "../datasets/shapes16/train_data/",
            "../datasets/shapes16/val_data/",
            "../datasets/shapes16/synthesis_data/",
        )
        assert (hp.data.target_res, hp.data.channels, hp.data.num_bits) == (16, 3, 5.0)
        # The demo renders the output distribution's mean (pictures without sampling noise).
        assert hp.synthesis.output_sampling == "mean"

    def test_is_a_small_model(self, quickstart):
        hp = quickstart
        assert 200_000 <= parameter_count(EGS_DIR / "quickstart.cfg") <= 1_000_000
        latent_groups = len(hp.model.down_strides) + sum(hp.model.down_n_blocks_per_res)
        assert latent_groups == 8
        assert max(hp.model.up_filters + hp.model.down_filters + [hp.model.input_conv_filters]) <= 64
        assert hp.data.target_res // math.prod(hp.model.down_strides) == 1  # a 1x1 top, as the baselines

    def test_schedules_fit_inside_the_run(self, quickstart):
        hp = quickstart
        total = hp.train.total_train_steps
        assert 100 <= total <= 5000
        # KL warm-up done by mid-run, and balancing switched off before the end.
        midway = total // 2
        assert linear_beta(midway, hp.loss.vae_beta_anneal_start, hp.loss.vae_beta_anneal_steps,
                           hp.loss.vae_beta_min) == 1.0
        assert hp.loss.gamma_max_steps < total
        # The cosine reaches its minimum exactly at the last update.
        assert hp.optimizer.learning_rate_scheme == "cosine"
        assert hp.optimizer.warmup_steps <= hp.optimizer.decay_start
        assert hp.optimizer.decay_start + hp.optimizer.decay_steps == total
        # The EMA's memory (1 / (1 - decay) updates) is well inside the run.
        assert 1.0 / (1.0 - hp.train.ema_decay) <= total / 2
        # Validated and checkpointed a few times, the last time at the end.
        assert total % hp.train.checkpoint_and_eval_interval_in_steps == 0
        assert total // hp.train.checkpoint_and_eval_interval_in_steps >= 2
