"""load_config: layout, types, validation messages and overrides."""
import pytest

from hparams import ConfigError, MissingKeyError, load_config
from hparams.formatting import format_value
from hparams.evaluator import evaluate_value

from tests.hparams.helpers import reference_text, write_config


def test_reference_config_loads(reference_config):
    hp = reference_config
    assert hp.model.up_strides == [1, 2, 1, 2, 1, 4, 1]
    assert hp.model.input_kernel_size == (1, 1)
    assert hp.data.num_bits == 8.0 and isinstance(hp.data.num_bits, float)
    assert hp.train.batch_size == 4
    assert hp.synthesis.temperature_settings[4] == ("linear", 0.7, 0.9)
    # Keys this project added take their defaults.
    assert hp.run.mixed_precision is False and hp.data.full_test_set is False


def test_to_dict_is_a_copy(reference_config):
    d = reference_config.to_dict()
    d["model"]["up_strides"].append(99)
    assert reference_config.model.up_strides == [1, 2, 1, 2, 1, 4, 1]
    assert set(d) == {"run", "data", "model", "loss", "metrics", "optimizer", "init", "train", "val", "synthesis"}


def test_values_are_independent_objects(tmp_path):
    # The original cached values by text: two keys with the same text shared one list.
    path = write_config(tmp_path, {("model", "up_n_blocks"): "[1] * 7", ("model", "down_n_blocks"): "[1] * 7"})
    hp = load_config(path)
    assert hp.model.up_n_blocks == hp.model.down_n_blocks
    assert hp.model.up_n_blocks is not hp.model.down_n_blocks


def test_missing_key_is_attribute_error(reference_config):
    with pytest.raises(MissingKeyError):
        reference_config.model.no_such_key
    assert getattr(reference_config.model, "no_such_key", "fallback") == "fallback"


def test_colon_separator_comments_and_continuation_lines(tmp_path):
    text = reference_text().replace(
        "up_strides = [1, 2, 1, 2, 1, 4, 1]",
        "; a semicolon comment\nup_strides: [1, 2, 1,\n    2, 1, 4,\n    1]",
    )
    path = tmp_path / "hparams.cfg"
    path.write_text(text)
    assert load_config(path).model.up_strides == [1, 2, 1, 2, 1, 4, 1]


@pytest.mark.parametrize("written", ["small", "'small'", '"small"'])
def test_run_name_quoted_or_not(tmp_path, written):
    path = write_config(tmp_path, {("run", "name"): written})
    assert load_config(path).run.name == "small"


def test_lowercase_booleans(tmp_path):
    path = write_config(tmp_path, {("model", "stable_init"): "false"})
    assert load_config(path).model.stable_init is False


@pytest.mark.parametrize(
    "changes, must_name",
    [
        ({("run", "seed"): "__import__('os').system('echo hi')"}, "[run] seed"),
        ({("optimizer", "learning_rate"): "(lambda: 1)()"}, "[optimizer] learning_rate"),
        ({("train", "batch_size"): "[b for b in range(3)]"}, "[train] batch_size"),
        ({("data", "target_res"): "x.y + 1"}, "[data] target_res"),
        ({("train", "batch_size"): "'sixteen'"}, "[train] batch_size"),
        ({("model", "stable_init"): "1"}, "[model] stable_init"),
        ({("data", "dataset_source"): "cifar-100"}, "[data] dataset_source"),
        ({("optimizer", "type"): "SGD"}, "[optimizer] type"),
        ({("model", "distribution_base"): "var"}, "[model] distribution_base"),
        ({("synthesis", "synthesis_mode"): "sampling"}, "[synthesis] synthesis_mode"),
        ({("model", "up_filters"): "[32] * 6"}, "[model] up_filters"),
        ({("model", "down_strides"): "[1, 4, 1, 2, 1, 1, 2]"}, "[model] down_strides"),
        ({("data", "target_res"): "40"}, "[data] target_res"),
        ({("model", "up_skip_filters"): "[32] * 6 + [16]"}, "[model] up_skip_filters"),
        ({("model", "up_filters"): "[32, 32, 64, 64, 64, 64, 64]", ("model", "up_skip_filters"): "[32] * 7"},
         "[model] up_filters"),
        ({("model", "down_filters"): "[32, 48] + [32] * 5"}, "[model] down_filters"),
        ({("optimizer", "warmup_steps"): "60000."}, "[optimizer] warmup_steps"),
        ({("synthesis", "temperature_settings"): "[[0.8, 0.9]]"}, "[synthesis] temperature_settings"),
        ({("synthesis", "temperature_settings"): "[('cosine', 0.8, 0.9)]"}, "[synthesis] temperature_settings"),
        ({("data", "num_bits"): "9."}, "[data] num_bits"),
        ({("synthesis", "num_importance_samples"): "2", ("synthesis", "mask_reconstruction"): "True"},
         "[synthesis] num_importance_samples"),
        ({("model", "up_kernel_size"): "[3] * 6 + [(1, 2, 3)]"}, "[model] up_kernel_size"),
    ],
)
def test_invalid_values_name_the_key(tmp_path, changes, must_name):
    path = write_config(tmp_path, changes)
    with pytest.raises(ConfigError) as error:
        load_config(path)
    message = str(error.value)
    assert must_name in message
    assert "\n" not in message


def test_unknown_and_missing_keys(tmp_path):
    text = reference_text()
    unknown = tmp_path / "unknown.cfg"
    unknown.write_text(text.replace("seed = 420", "seed = 420\nsede = 1"))
    with pytest.raises(ConfigError, match="unknown key 'sede' in \\[run\\]"):
        load_config(unknown)
    missing = tmp_path / "missing.cfg"
    missing.write_text(text.replace("seed = 420\n", ""))
    with pytest.raises(MissingKeyError, match="\\[run\\] seed is missing"):
        load_config(missing)
    duplicated = tmp_path / "duplicated.cfg"
    duplicated.write_text(text.replace("seed = 420", "seed = 420\nseed = 421"))
    with pytest.raises(ConfigError, match="set twice"):
        load_config(duplicated)


def test_missing_file_is_an_error(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "hparams.cfg")


def test_overrides(tmp_path):
    path = write_config(tmp_path, {})
    hp = load_config(path, ["train.batch_size=16", "run.name=try1", "optimizer.learning_rate=2e-4"])
    assert (hp.train.batch_size, hp.run.name, hp.optimizer.learning_rate) == (16, "try1", 2e-4)
    with pytest.raises(ConfigError, match="unknown key"):
        load_config(path, ["train.batchsize=16"])
    with pytest.raises(ConfigError, match="section.key=value"):
        load_config(path, ["batch_size=16"])
    with pytest.raises(ConfigError, match="\\[model\\] up_filters"):
        load_config(path, ["model.up_filters=[32] * 3"])


@pytest.mark.parametrize(
    "value",
    [[1] * 11 + [2], [64, 64] + [128] * 10 + [256] * 5, [3, 3, 1], [], (1, 1), [0.8, ("linear", 0.7, 0.9)],
     [[0.5] * 4, 0.9], "cifar-10", 1e-4, 8.0, -250.0, True, None],
)
def test_format_value_round_trips(value):
    text = format_value(value)
    assert evaluate_value(text) == value
    assert type(evaluate_value(text)) is type(value)
