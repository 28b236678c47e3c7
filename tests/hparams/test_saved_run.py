"""Saved runs: written once, reused by later processes, frozen model/data."""
import subprocess
import sys

import pytest

from hparams import ConfigError, load_config, load_run_config, saved_config_path
from tests.hparams.helpers import REFERENCE_CONFIG, write_config


def run_hparams_cli(cwd, *args):
    return subprocess.run(
        [sys.executable, "-m", "hparams", *args], cwd=cwd, capture_output=True, text=True, timeout=60
    )


def test_first_run_saves_and_later_runs_read_it(tmp_path):
    main = write_config(tmp_path, {("run", "name"): "myrun"})
    config = load_run_config(main, ["train.batch_size=8"], save=True, root=tmp_path)
    saved = saved_config_path("myrun", tmp_path)
    assert saved.is_file() and saved.parent.name == "logs-myrun"
    assert config.train.batch_size == 8
    # The saved copy holds the override and reloads to the same values.
    assert load_config(saved).to_dict() == config.to_dict()
    # No temporary file is left beside it.
    assert [p.name for p in saved.parent.iterdir()] == ["hparams-myrun.cfg"]

    # The main file changes; a new process running the same name sees the saved values.
    write_config(tmp_path, {("run", "name"): "myrun", ("optimizer", "learning_rate"): "5e-1"})
    result = run_hparams_cli(tmp_path, "--config", "hparams.cfg")
    assert result.returncode == 0, result.stderr
    assert "learning_rate = 0.001" in result.stdout
    assert "batch_size = 8" in result.stdout


def test_saved_copy_keeps_comments(tmp_path):
    text = REFERENCE_CONFIG.read_text().replace("[run]", "[run]\n# my favourite run")
    main = tmp_path / "hparams.cfg"
    main.write_text(text)
    load_run_config(main, ["val.batch_size=2"], save=True, root=tmp_path)
    saved_text = saved_config_path("small", tmp_path).read_text()
    assert "# my favourite run" in saved_text
    assert "Overrides applied: val.batch_size=2" in saved_text


def test_saved_run_refuses_model_and_data_overrides(tmp_path):
    main = write_config(tmp_path, {})
    load_run_config(main, save=True, root=tmp_path)
    with pytest.raises(ConfigError, match="\\[model\\] up_filters of a saved run cannot change"):
        load_run_config(main, ["model.up_filters=[64] * 7"], root=tmp_path)
    with pytest.raises(ConfigError, match="\\[data\\] num_bits"):
        load_run_config(main, ["data.num_bits=5"], root=tmp_path)
    # The same value, data paths and synthesis settings are fine.
    config = load_run_config(
        main,
        ["data.num_bits=8", "data.train_data_path=/new/place", "synthesis.synthesis_mode=generation",
         "synthesis.output_temperature=0.8"],
        root=tmp_path,
    )
    assert config.synthesis.synthesis_mode == "generation"
    assert config.data.train_data_path == "/new/place"


def test_non_writer_does_not_write(tmp_path):
    main = write_config(tmp_path, {})
    config = load_run_config(main, save=True, is_writer=False, root=tmp_path)
    assert config.run.name == "small"
    assert not (tmp_path / "logs-small").exists()


def test_bad_config_exits_2_and_writes_nothing(tmp_path):
    write_config(tmp_path, {("train", "batch_size"): "__import__('os').getcwd()"})
    result = run_hparams_cli(tmp_path, "--config", "hparams.cfg")
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "[train] batch_size" in lines[0]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["hparams.cfg"]


def test_missing_config_file_exits_2(tmp_path):
    result = run_hparams_cli(tmp_path, "--config", "nope.cfg")
    assert result.returncode == 2
    assert "nope.cfg: configuration file not found" in result.stderr


def test_hparams_registry(tmp_path, monkeypatch):
    from hparams import HParams

    write_config(tmp_path, {})
    monkeypatch.chdir(tmp_path)
    hp = HParams(tmp_path, name="test_registry")
    assert HParams.get_hparams_by_name("test_registry") is hp
    assert hp.model.up_strides == [1, 2, 1, 2, 1, 4, 1]
    assert (tmp_path / "logs-small" / "hparams-small.cfg").is_file()


def test_config_that_differs_from_the_saved_model_says_the_saved_one_is_used(tmp_path):
    # Issue 12, item 7: a changed --config is not silently ignored.
    write_config(tmp_path, {})
    load_run_config(tmp_path / "hparams.cfg", save=True, root=tmp_path)
    write_config(tmp_path, {("model", "num_output_mixtures"): "5", ("model", "up_filters"): "[1, 2]",
                            ("train", "batch_size"): "2"}, name="changed.cfg")
    result = run_hparams_cli(tmp_path, "--config", "changed.cfg")
    assert result.returncode == 0, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert "saved configuration" in lines[0] and "logs-small/hparams-small.cfg" in lines[0]
    assert "model.up_filters, model.num_output_mixtures" in lines[0] and "train.batch_size" not in lines[0]
    assert "num_output_mixtures = 10" in result.stdout  # the saved value is the one used

    # The same model (other sections may differ): no note.
    write_config(tmp_path, {("train", "batch_size"): "2"}, name="same_model.cfg")
    result = run_hparams_cli(tmp_path, "--config", "same_model.cfg")
    assert result.returncode == 0 and result.stderr == ""


def test_only_the_writer_prints_the_saved_configuration_note(tmp_path, capsys):
    main = write_config(tmp_path, {})
    load_run_config(main, save=True, root=tmp_path)
    write_config(tmp_path, {("model", "num_output_mixtures"): "5"})
    load_run_config(main, is_writer=False, root=tmp_path)
    assert capsys.readouterr().err == ""
    load_run_config(main, root=tmp_path)
    assert "model.num_output_mixtures" in capsys.readouterr().err


# Issue 9, item 4: switches that cannot hurt a trained model stay switchable on a saved run.
SWITCHABLE = [
    "data.full_test_set=True",
    "data.download_dir=/elsewhere/datasets",
    "data.skip_corrupt_images=True",
    "data.val_data_path=/elsewhere/val",
    "data.synthesis_data_path=/elsewhere/test",
    "data.train_data_path=/elsewhere/train",
]
FROZEN = [
    "data.dataset_source=imagenet",
    "data.target_res=64",
    "data.num_bits=5",
    "data.random_horizontal_flip=False",  # changes the training data
    "model.num_output_mixtures=5",
    "model.up_filters=[64] * 7",
]


@pytest.mark.parametrize("override", SWITCHABLE)
def test_harmless_data_switches_are_accepted_on_a_saved_run(tmp_path, override):
    main = write_config(tmp_path, {})
    saved = load_run_config(main, save=True, root=tmp_path)
    key, _, text = override.partition("=")
    section, name = key.split(".")
    config = load_run_config(main, [override, "synthesis.synthesis_mode=generation"], root=tmp_path)
    value = getattr(config.data, name)
    assert value != getattr(saved.data, name)  # the switch really changed something
    assert value == (True if text == "True" else text)
    # ... for this invocation only: the saved copy is not rewritten.
    assert getattr(load_run_config(main, root=tmp_path).data, name) == getattr(saved.data, name)


def test_synthesis_cli_accepts_the_full_test_set_switch_on_a_saved_run(tmp_path):
    write_config(tmp_path, {})
    load_run_config(tmp_path / "hparams.cfg", save=True, root=tmp_path)
    result = run_hparams_cli(tmp_path, "--set", "data.full_test_set=True", "synthesis.synthesis_mode=reconstruction")
    assert result.returncode == 0, result.stderr
    assert "full_test_set = True" in result.stdout


@pytest.mark.parametrize("override", FROZEN)
def test_model_and_training_data_keys_stay_frozen_on_a_saved_run(tmp_path, override):
    main = write_config(tmp_path, {})
    load_run_config(main, save=True, root=tmp_path)
    key = override.partition("=")[0].split(".")
    with pytest.raises(ConfigError, match=f"\\[{key[0]}\\] {key[1]} of a saved run cannot change"):
        load_run_config(main, [override], root=tmp_path)


def test_switchable_keys_exist_and_every_other_model_and_data_key_is_frozen():
    from hparams.schema import FROZEN_IN_SAVED_RUN, SCHEMA, SWITCHABLE_IN_SAVED_RUN

    assert all(key in SCHEMA[section] for section, key in SWITCHABLE_IN_SAVED_RUN)
    for section in ("model", "data"):
        for key in SCHEMA[section]:
            assert ((section, key) in FROZEN_IN_SAVED_RUN) != ((section, key) in SWITCHABLE_IN_SAVED_RUN)
