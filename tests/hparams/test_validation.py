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


# Issue 12, item 7: run.name, run.seed, a file with a byte-order mark.

@pytest.mark.parametrize(
    "text, must_say",
    [
        ("'a/b'", "'/'"),
        ("'../x'", "'/'"),
        ("'a\\0b'", "NUL"),
        ("'a\\nb'", "control characters"),
        ("'..'", "plain"),
        ("''", "plain"),
        ("'x' * 201", "at most 200 bytes"),
        ("'\u00e9' * 101", "at most 200 bytes"),  # 202 bytes in UTF-8, 101 characters
    ],
)
def test_invalid_run_name_is_refused(tmp_path, text, must_say):
    assert_refused(tmp_path, {("run", "name"): text}, "[run] name", must_say)


def test_run_name_at_the_byte_limit_makes_every_folder(tmp_path):
    from hparams import load_run_config, saved_config_path

    name = "n" * 200
    config = load_run_config(write_config(tmp_path, {("run", "name"): repr(name)}), save=True, root=tmp_path)
    assert config.run.name == name
    assert saved_config_path(name, tmp_path).is_file()
    (tmp_path / f"checkpoints-{name}.history").mkdir()  # the longest folder a run makes


def test_invalid_run_name_exits_2_before_anything_is_written(tmp_path):
    write_config(tmp_path, {})
    result = subprocess.run(
        [sys.executable, "-m", "hparams", "--config", "hparams.cfg", "--set", "run.name=" + "y" * 300],
        cwd=tmp_path, capture_output=True, text=True, timeout=60,
    )
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1 and "[run] name" in result.stderr and "y" * 300 not in result.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["hparams.cfg"]


@pytest.mark.parametrize("text", ["-1", "2**32", "2**40", "1.5", "float('nan')"])
def test_seed_outside_uint32_is_refused(tmp_path, text):
    assert_refused(tmp_path, {("run", "seed"): text}, "[run] seed")


@pytest.mark.parametrize("seed", [0, 2**32 - 1])
def test_seed_range_ends_are_accepted(tmp_path, seed):
    assert load_config(write_config(tmp_path, {("run", "seed"): str(seed)})).run.seed == seed


def test_config_file_with_a_byte_order_mark_is_accepted(tmp_path):
    from hparams import load_run_config, saved_config_path
    from tests.hparams.helpers import reference_text

    path = tmp_path / "hparams.cfg"
    path.write_bytes(b"\xef\xbb\xbf" + reference_text().encode("utf-8"))
    config = load_run_config(path, save=True, root=tmp_path)
    assert config.run.name == "small" and config.model.up_strides == [1, 2, 1, 2, 1, 4, 1]
    # The saved copy has no mark and reads back the same.
    saved = saved_config_path("small", tmp_path)
    assert not saved.read_bytes().startswith(b"\xef\xbb\xbf")
    assert load_config(saved).to_dict() == config.to_dict()
