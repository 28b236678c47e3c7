"""Values that type-check but would break a run are refused naming the key
(issue 12): non-finite floats, negative or NaN temperatures."""
import subprocess
import sys

import pytest

from hparams import ConfigError, load_config
from hparams.schema import SCHEMA
from tests.hparams.helpers import write_config

FLOAT_KINDS = {"float", "positive_float", "non_negative_float", "unit_float", "fraction", "temperature"}
FLOAT_KEYS = [(section, key) for section, keys in SCHEMA.items() for key, spec in keys.items()
              if spec.kind in FLOAT_KINDS]
NON_FINITE = ["inf", "-inf", "nan", "1e400", "-1e400", "float('inf')", "float('nan')", "float('-inf')", "10**400"]


def assert_refused(tmp_path, changes, must_name, must_say=""):
    with pytest.raises(ConfigError) as error:
        load_config(write_config(tmp_path, changes))
    message = str(error.value)
    assert must_name in message and must_say in message, message
    assert "\n" not in message
    return message


def test_float_keys_are_found():
    assert len(FLOAT_KEYS) > 20 and ("optimizer", "learning_rate") in FLOAT_KEYS


@pytest.mark.parametrize("section, key", FLOAT_KEYS)
def test_non_finite_float_is_refused_naming_the_key(tmp_path, section, key):
    # `inf` and `nan` are no names the evaluator knows; only the spellings that
    # produce a float reach the check: 1e400, float('inf'), float('nan').
    for text in ("1e400", "float('nan')", "-float('inf')"):
        assert_refused(tmp_path, {(section, key): text}, f"[{section}] {key}")


@pytest.mark.parametrize("text", NON_FINITE)
def test_every_spelling_of_a_non_finite_learning_rate_is_refused(tmp_path, text):
    assert_refused(tmp_path, {("optimizer", "learning_rate"): text}, "[optimizer] learning_rate")


@pytest.mark.parametrize(
    "section, key, text",
    [
        ("model", "up_mid_filters_ratio", "[0.25] * 6 + [float('nan')]"),
        ("synthesis", "temperature_settings", "[0.8, 1e400]"),
        ("synthesis", "temperature_settings", "[('linear', 0.7, float('inf'))]"),
    ],
)
def test_non_finite_entries_of_lists_are_refused(tmp_path, section, key, text):
    message = assert_refused(tmp_path, {(section, key): text}, f"[{section}] {key}", "finite")
    assert "entry" in message


def test_cli_exits_2_on_non_finite_float(tmp_path):
    write_config(tmp_path, {("loss", "min_mol_logscale"): "-1e400"})
    result = subprocess.run([sys.executable, "-m", "hparams", "--config", str(tmp_path / "hparams.cfg")],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1 and "[loss] min_mol_logscale" in result.stderr


TEMPERATURE_KEYS = [(section, key) for section, keys in SCHEMA.items() for key in keys if "temperature" in key]


def test_temperature_keys_are_found():
    assert ("synthesis", "temperature_settings") in TEMPERATURE_KEYS
    assert ("synthesis", "output_temperature") in TEMPERATURE_KEYS


@pytest.mark.parametrize("section, key", TEMPERATURE_KEYS)
@pytest.mark.parametrize("bad", ["-0.5", "float('nan')"])
def test_negative_or_nan_temperature_is_refused(tmp_path, section, key, bad):
    # Every temperature key, in each form it takes: a number, a list per level, a linear ramp.
    forms = [bad]
    if SCHEMA[section][key].kind == "temperature_settings":
        forms = [f"[{bad}]", f"[0.8, [{bad}] * 7]", f"[('linear', 0.7, {bad})]", f"[('linear', {bad}, 0.9)]"]
    for text in forms:
        assert_refused(tmp_path, {(section, key): text}, f"[{section}] {key}")


def test_zero_and_positive_temperatures_are_accepted(tmp_path):
    config = load_config(write_config(tmp_path, {
        ("synthesis", "temperature_settings"): "[0., 0.8, [1.] * 7, ('linear', 0., 1.2)]",
        ("synthesis", "output_temperature"): "0.",
    }))
    assert config.synthesis.temperature_settings == [0.0, 0.8, [1.0] * 7, ("linear", 0.0, 1.2)]
    assert config.synthesis.output_temperature == 0.0
