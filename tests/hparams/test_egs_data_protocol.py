"""The evaluation protocol of the published configurations, as SPEC section 1 and 12 state it."""
from pathlib import Path

import pytest

from hparams.config import load_config

EGS = Path(__file__).resolve().parents[2] / "egs"


@pytest.mark.parametrize("prefix", ["imagenet32", "imagenet64", "celebAHQ", "ffhq"])
def test_item10_val_folder_is_also_the_synthesis_set(prefix):
    """Issue 9 item 10: no seeded test split; validation and synthesis read the same val folder (as the original)."""
    configs = sorted(EGS.glob(f"{prefix}*.cfg"))
    assert configs
    for path in configs:
        data = load_config(path).data
        assert data.val_data_path == data.synthesis_data_path and data.val_data_path.rstrip("/").endswith("val_data")


def test_item10_celeba_keeps_its_official_test_split():
    for path in sorted(EGS.glob("celebA64*.cfg")):
        data = load_config(path).data
        assert data.synthesis_data_path.rstrip("/").endswith("synthesis_data")  # partition 2 (SPEC section 1)
        assert data.synthesis_data_path != data.val_data_path
