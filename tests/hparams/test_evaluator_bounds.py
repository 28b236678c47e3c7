"""The config evaluator cannot be hung: every value evaluates or is refused
quickly, with a short one-line message (issue 12, item 6).

Expressions are evaluated in a separate worker process with a memory limit,
and each one must answer within TIME_LIMIT seconds: a hang or a memory blow-up
fails the test instead of hanging the suite (a signal could not interrupt a
long C-level operation such as a huge integer power).
"""
import json
import math
import select
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from hparams.evaluator import MAX_WEIGHT
from tests.hparams.helpers import write_config

# Hypothesis warns when it describes the (large) recursive strategy.
pytestmark = pytest.mark.filterwarnings("ignore:Generating overly large repr")

REPO = Path(__file__).resolve().parents[2]
TIME_LIMIT = 5.0  # seconds per value; evaluation itself takes milliseconds
MESSAGE_LIMIT = 400  # characters of a refusal message

# Evaluates one JSON-encoded value text per line through the same path a
# config file takes, and answers with one JSON line. An accepted value is
# also evaluated by Python's own `eval` (safe here: the evaluator has
# already bounded it) to check that the evaluator computes what Python does.
_WORKER = r"""
import builtins, json, resource, sys, time
resource.setrlimit(resource.RLIMIT_AS, (2 << 30, 2 << 30))
from hparams.config import evaluate_entry
from hparams.errors import ConfigError

PYTHON_BUILTINS = {name: getattr(builtins, name)
                   for name in ("min", "max", "abs", "round", "int", "float", "len", "sum", "list", "tuple")}
PYTHON_BUILTINS["range"] = lambda *args: list(range(*args))

def weight(value):
    if isinstance(value, (list, tuple)):
        return 1 + sum(weight(element) for element in value)
    return 1 + len(value) if isinstance(value, str) else 1

for line in sys.stdin:
    text = json.loads(line)
    start = time.perf_counter()
    try:
        value = evaluate_entry("train", "batch_size", text, "test.cfg:1")
        reply = {"status": "ok", "weight": weight(value), "repr": repr(value)[:200]}
        try:
            reply["python"] = repr(eval(text, {"__builtins__": PYTHON_BUILTINS})) == repr(value)
        except Exception as error:
            reply["python"] = f"Python raises {type(error).__name__}: {error}"[:300]
    except ConfigError as error:
        reply = {"status": "refused", "message": str(error)}
    except BaseException as error:
        reply = {"status": "crash", "message": f"{type(error).__name__}: {error}"[:500]}
    reply["seconds"] = time.perf_counter() - start
    print(json.dumps(reply), flush=True)
"""


class Worker:
    def __init__(self):
        self.process = None

    def _start(self):
        self.process = subprocess.Popen(
            [sys.executable, "-c", _WORKER], cwd=REPO, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
        )

    def evaluate(self, text: str) -> dict:
        if self.process is None or self.process.poll() is not None:
            self._start()
        self.process.stdin.write(json.dumps(text) + "\n")
        self.process.stdin.flush()
        ready, _, _ = select.select([self.process.stdout], [], [], TIME_LIMIT)
        if not ready:
            self.close()
            pytest.fail(f"evaluating {text!r} took more than {TIME_LIMIT} s")
        line = self.process.stdout.readline()
        if not line:
            self.close()
            pytest.fail(f"the worker died evaluating {text!r}")
        return json.loads(line)

    def close(self):
        if self.process is not None:
            self.process.kill()
            self.process.wait()
            self.process = None


@pytest.fixture(scope="module")
def worker():
    evaluator = Worker()
    yield evaluator
    evaluator.close()


def check_answer(text: str, answer: dict) -> None:
    assert answer["status"] != "crash", f"{text!r}: {answer['message']}"
    assert answer["seconds"] < TIME_LIMIT
    if answer["status"] == "refused":
        message = answer["message"]
        assert "\n" not in message and len(message) <= MESSAGE_LIMIT, message
        assert message.startswith("test.cfg:1: [train] batch_size = ")
    else:
        assert answer["weight"] <= MAX_WEIGHT
        assert answer["python"] is True, f"{text!r} gave {answer['repr']}; {answer['python']}"


# Random expressions of the evaluator's grammar, with the ingredients of the
# known attacks (large counts and exponents, strings, % formatting) among the leaves.
_LEAVES = st.one_of(
    st.integers(-10**6, 10**6).map(str),
    st.floats(allow_nan=False).map(repr),
    st.text(alphabet="ab%d*9", max_size=6).map(repr),
    st.sampled_from(
        ["0", "1", "2", "-1", "10**4", "10**5", "10**9", "9**9**9", "2**64", "2**4095", "1e400", "1e-4", "0.5",
         "True", "False", "None", "[]", "()", "''", "'%999999999d'", "[0] * 10**4", "float('inf')",
         "float('nan')", "range(10**4)"]
    ),
)
_BINARY = ["+", "-", "*", "/", "//", "%", "**"]
_COMPARE = ["<", "<=", "==", "!=", ">", ">="]
_CALLS = ["min", "max", "abs", "round", "int", "float", "len", "range", "sum", "list", "tuple"]


def _compound(children):
    joined = lambda parts: ", ".join(parts)  # noqa: E731
    return st.one_of(
        st.lists(children, max_size=4).map(lambda xs: "[" + joined(xs) + "]"),
        st.lists(children, min_size=1, max_size=3).map(lambda xs: "(" + joined(xs) + ",)"),
        st.tuples(children, st.sampled_from(_BINARY), children).map(lambda t: f"({t[0]}) {t[1]} ({t[2]})"),
        st.tuples(children, st.sampled_from(_BINARY), children).map(lambda t: f"{t[0]} {t[1]} {t[2]}"),
        st.tuples(st.sampled_from(["-", "+", "not "]), children).map(lambda t: f"{t[0]}({t[1]})"),
        st.tuples(children, st.sampled_from(_COMPARE), children).map(lambda t: f"({t[0]}) {t[1]} ({t[2]})"),
        st.tuples(children, st.sampled_from(["and", "or"]), children).map(lambda t: f"({t[0]}) {t[1]} ({t[2]})"),
        st.tuples(st.sampled_from(_CALLS), st.lists(children, max_size=3)).map(lambda t: f"{t[0]}({joined(t[1])})"),
    )


EXPRESSIONS = st.recursive(_LEAVES, _compound, max_leaves=30)


@settings(max_examples=400, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow])
@given(text=EXPRESSIONS)
def test_random_expressions_evaluate_or_are_refused_quickly(worker, text):
    answer = worker.evaluate(text)
    event(answer["status"])  # shown by --hypothesis-show-statistics: both outcomes are common
    check_answer(text, answer)


@pytest.mark.parametrize(
    "text",
    [
        "[[0] * 10**4] * 10**4",  # nested repetition: 10**8 elements behind a 10**4-element list
        "[[[0] * 100] * 100] * 100",
        "sum([[0] * 10**4] * 10**4, [])",  # sum() over a huge list
        "sum([[0]] * 10**4, [])",  # quadratic list concatenation
        "sum(range(10**12))",
        "len(range(10**100))",
        "list(range(10**9))",
        "9**9**9",  # chained exponents
        "((10**1000)**1000)**1000",
        "2**10**7",
        "(2**4000) * (2**4000)",
        "'a' * 10**9",
        "'%999999999d' % 1",  # % formatting builds a huge string
        "'x' * 50000 + 'x' * 50001",
        "[0] * 10**5",
        "round(10**1000, -10**30)",  # round(n, -d) computes 10 ** d
        "int('1' * 5000)",
        "- " * 3000 + "1",  # nesting that Python's own parser gives up on
        "+".join(["1"] * 3000),
        "(" * 1000 + "1" + ")" * 1000,
        "[" + "0, " * 5000 + "0]",  # long text
    ],
)
def test_known_attacks_are_refused_quickly(worker, text):
    answer = worker.evaluate(text)
    check_answer(text, answer)
    assert answer["status"] == "refused", answer


@pytest.mark.parametrize(
    "text, expected",
    [
        ("[0] * (10**5 - 2)", None),  # just under the element limit
        ("2**4095", 2**4095),
        ("[[1] * 3] * 2 + [[2]]", [[1, 1, 1], [1, 1, 1], [2]]),
        ("max([1, 2, 3]) + sum([1, 2], 3) + len(range(4))", 13),
        ("round(2.675, 2)", round(2.675, 2)),
        ("[] * 10**9", []),
        ("+".join(["1"] * 90), 90),
    ],
)
def test_values_near_the_bounds_evaluate(worker, text, expected):
    answer = worker.evaluate(text)
    check_answer(text, answer)
    assert answer["status"] == "ok", answer
    if expected is not None:
        assert answer["repr"] == repr(expected)[:200]


def test_refusal_messages_echo_a_short_value(worker):
    # Python's own message quotes the whole argument.
    answer = worker.evaluate("int('9' * 4000 + 'x')")
    assert answer["status"] == "refused"
    assert len(answer["message"]) <= MESSAGE_LIMIT and "..." in answer["message"]


def _run_cli(directory: Path, changes: dict) -> subprocess.CompletedProcess:
    write_config(directory, changes)
    return subprocess.run(
        [sys.executable, "-m", "hparams", "--config", str(directory / "hparams.cfg")],
        cwd=REPO, capture_output=True, text=True, timeout=60,
    )


@pytest.mark.parametrize(
    "section, key, text",
    [
        ("model", "up_filters", "[[0] * 10**4] * 10**4"),
        # Accepted by the evaluator, refused by the type check: the message must not print 10**5 zeros.
        ("train", "batch_size", "[0] * 99999"),
        ("model", "up_filters", "[10**1000] * 7"),
    ],
)
def test_cli_refuses_costly_values_with_one_short_line(tmp_path, section, key, text):
    result = _run_cli(tmp_path, {(section, key): text})
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and f"[{section}] {key}" in lines[0], result.stderr
    assert len(lines[0]) <= MESSAGE_LIMIT + 100


def test_weight_counts_shared_elements():
    # Python shares the inner list, but checks and messages walk every element.
    from hparams.evaluator import UnsafeExpressionError, evaluate_value

    side = math.isqrt(MAX_WEIGHT) + 1
    with pytest.raises(UnsafeExpressionError, match="more than"):
        evaluate_value(f"[[0] * {side}] * {side}")
