"""The config value evaluator: plain values work, code never runs."""
import pytest

from hparams.evaluator import UnsafeExpressionError, evaluate_value


@pytest.mark.parametrize(
    "text, expected",
    [
        ("[1] * 11 + [2]", [1] * 11 + [2]),
        ("32 * 2", 64),
        ("1e-4", 1e-4),
        ("8.", 8.0),
        ("max(3, 7) / 2", 3.5),
        ("(1, 1)", (1, 1)),
        ("[0.8, ('linear', 0.7, 0.9)]", [0.8, ("linear", 0.7, 0.9)]),
        ("-250.", -250.0),
        ("2 ** 10", 1024),
        ("32-2", 30),
        ("None", None),
        ("True", True),
        ("true", True),
        ("false", False),
        ("'cifar-10'", "cifar-10"),
        ("cifar-10", "cifar-10"),
        ("cifar10_baseline", "cifar10_baseline"),
        ("../datasets/imagenet_32/train_data/", "../datasets/imagenet_32/train_data/"),
        ("[1, 2]  # a trailing comment", [1, 2]),
        ("cifar-10  # a trailing comment", "cifar-10"),
        ("sum([1, 2, 3]) + len([0] * 4)", 10),
        ("list(range(3))", [0, 1, 2]),
        ("3 > 2 and 1 < 2", True),
    ],
)
def test_values_evaluate(text, expected):
    value = evaluate_value(text)
    assert value == expected
    assert type(value) is type(expected)


@pytest.mark.parametrize(
    "text",
    [
        "__import__('os').system('touch /tmp/pwned')",
        "open('/etc/passwd')",
        "().__class__.__bases__",
        "os.path.join('a', 'b')",
        "lambda: 1",
        "[x for x in [1, 2]]",
        "{k: 1 for k in 'ab'}",
        "(x := 3)",
        "[cifar, 1]",
        "9 ** 9 ** 9",
        "[0] * 10 ** 9",
        "max([1], key=len)",
        "f'{1}'",
        "[1, 2][0]",
    ],
)
def test_code_is_rejected(text, tmp_path):
    with pytest.raises((UnsafeExpressionError, SyntaxError)):
        evaluate_value(text)


def test_dunder_import_does_not_run(tmp_path):
    target = tmp_path / "pwned"
    with pytest.raises(UnsafeExpressionError):
        evaluate_value(f"__import__('os').system('touch {target}')")
    assert not target.exists()
