"""Safe evaluation of configuration values.

Values are Python expressions, but the original library evaluated them with
``eval``, so a config file could run arbitrary code. Here the expression is
parsed with :mod:`ast` and interpreted by a small walker that knows only
literals, arithmetic, comparisons, boolean logic, list/tuple building and a
short list of pure builtins. Nothing is ever executed.
"""
from __future__ import annotations

import ast
import operator
import re
from typing import Any, Callable

from .errors import shorten

__all__ = ["UnsafeExpressionError", "evaluate_value", "BARE_WORD"]


class UnsafeExpressionError(ValueError):
    """The expression uses something the evaluator does not allow."""


# A value whose whole text is one such token (and not a number or a constant)
# is a string: `cifar-10`, `cifar10_baseline`, `../datasets/x/`.
BARE_WORD = re.compile(r"^[A-Za-z0-9_\-./]+$")

_CONSTANT_NAMES = {"None": None, "True": True, "False": False, "true": True, "false": False}

_BUILTINS: dict[str, Callable[..., Any]] = {
    "min": min,
    "max": max,
    "abs": abs,
    "round": round,
    "int": int,
    "float": float,
    "len": len,
    "range": range,
    "sum": sum,
    "list": list,
    "tuple": tuple,
}

_BINARY_OPS: dict[type, Callable[[Any, Any], Any]] = {
    ast.Add: operator.add,
    ast.Sub: operator.sub,
    ast.Mult: operator.mul,
    ast.Div: operator.truediv,
    ast.FloorDiv: operator.floordiv,
    ast.Mod: operator.mod,
    ast.Pow: operator.pow,
}

_UNARY_OPS: dict[type, Callable[[Any], Any]] = {
    ast.UAdd: operator.pos,
    ast.USub: operator.neg,
    ast.Not: operator.not_,
}

_COMPARE_OPS: dict[type, Callable[[Any, Any], bool]] = {
    ast.Eq: operator.eq,
    ast.NotEq: operator.ne,
    ast.Lt: operator.lt,
    ast.LtE: operator.le,
    ast.Gt: operator.gt,
    ast.GtE: operator.ge,
}

# Bounds on the cost of evaluation itself, checked before a value is built:
# a few dozen characters (`[[0] * 10**4] * 10**4`, `9 ** 9 ** 9`) must not
# hang or exhaust memory. No real configuration comes near them.
MAX_TEXT_LENGTH = 10_000  # characters of one value's text
MAX_DEPTH = 100  # nesting of the expression
MAX_WEIGHT = 100_000  # elements of a value, counted through nesting (a string counts its characters)
MAX_INT_BITS = 4096  # size of any integer, intermediate or final
_MAX_ROUND_DIGITS = 1300  # more than the digits of any allowed integer or float

# An evaluated value and its weight: 1 for a number, bool or None, 1 + length
# for a string, 1 + the weights of the elements for a list or tuple. The
# weight of `[x] * n` counts x n times, although Python shares it, because
# everything downstream (checks, comparisons, messages) walks every element.
_Weighted = tuple[Any, int]


def evaluate_value(text: str) -> Any:
    """Evaluate the text of one configuration value.

    Raises:
        UnsafeExpressionError: the text is not a plain value, uses a
            construct that is not allowed, or would cost too much to
            evaluate (the message says which).
        SyntaxError: the text does not parse.
    """
    if len(text) > MAX_TEXT_LENGTH:
        raise UnsafeExpressionError(f"value is too long ({len(text)} characters; at most {MAX_TEXT_LENGTH})")
    stripped = _strip_trailing_comment(text.strip())
    if not stripped:
        raise UnsafeExpressionError("empty value")
    try:
        value, _ = _Interpreter().visit(_parse(stripped), 0)
        return value
    except (UnsafeExpressionError, SyntaxError):
        # `cifar-10` or `../data/x` are not expressions of numbers: a bare
        # token like these is a string. `32-2` still evaluates to 30.
        if BARE_WORD.match(stripped):
            return stripped
        raise


def _parse(text: str) -> ast.AST:
    try:
        return ast.parse(text, mode="eval").body
    except (RecursionError, MemoryError):
        # Python's own parser gives up on `- - - ... 1` thousands deep.
        raise UnsafeExpressionError(f"expression is nested too deeply (at most {MAX_DEPTH} levels)") from None


def _strip_trailing_comment(text: str) -> str:
    """Drop a `# comment` that follows a bare word (Python syntax drops it elsewhere)."""
    match = re.match(r"^([A-Za-z0-9_\-./]+)\s+#.*$", text)
    return match.group(1) if match else text


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float))


def _check_weight(weight: int, what: str) -> int:
    if weight > MAX_WEIGHT:
        raise UnsafeExpressionError(f"{what} would have more than {MAX_WEIGHT} elements")
    return weight


def _scalar(value: Any) -> _Weighted:
    """A computed number, refused if it is too large an integer or complex."""
    if isinstance(value, complex):
        raise UnsafeExpressionError("complex numbers are not allowed")
    if _is_int(value) and value.bit_length() > MAX_INT_BITS:
        raise UnsafeExpressionError(f"integer is too large (more than {MAX_INT_BITS} bits)")
    return value, 1


class _Interpreter:
    """Evaluates the allowed subset of Python expression nodes, keeping the
    weight of every value so that the next step can be bounded before it runs."""

    def visit(self, node: ast.AST, depth: int) -> _Weighted:
        if depth > MAX_DEPTH:
            raise UnsafeExpressionError(f"expression is nested too deeply (at most {MAX_DEPTH} levels)")
        method = getattr(self, "visit_" + type(node).__name__, None)
        if method is None:
            raise UnsafeExpressionError(f"{_describe(node)} is not allowed in a config value")
        return method(node, depth + 1)

    def visit_Constant(self, node: ast.Constant, depth: int) -> _Weighted:
        value = node.value
        if isinstance(value, (bytes, type(Ellipsis))):
            raise UnsafeExpressionError(f"{_describe(node)} is not allowed in a config value")
        if isinstance(value, str):
            return value, _check_weight(1 + len(value), "a string")
        return _scalar(value)

    def visit_Name(self, node: ast.Name, depth: int) -> _Weighted:
        if node.id in _CONSTANT_NAMES:
            return _CONSTANT_NAMES[node.id], 1
        raise UnsafeExpressionError(
            f"unknown name {shorten(node.id, 40)!r} (quote it if it is meant as a string)"
        )

    def _elements(self, nodes: list[ast.expr], depth: int) -> tuple[list, int]:
        values, weight = [], 1
        for element in nodes:
            value, element_weight = self.visit(element, depth)
            values.append(value)
            weight = _check_weight(weight + element_weight, "a list")
        return values, weight

    def visit_List(self, node: ast.List, depth: int) -> _Weighted:
        return self._elements(node.elts, depth)

    def visit_Tuple(self, node: ast.Tuple, depth: int) -> _Weighted:
        values, weight = self._elements(node.elts, depth)
        return tuple(values), weight

    def visit_UnaryOp(self, node: ast.UnaryOp, depth: int) -> _Weighted:
        op = _UNARY_OPS.get(type(node.op))
        if op is None:
            raise UnsafeExpressionError(f"operator {type(node.op).__name__} is not allowed")
        operand, _ = self.visit(node.operand, depth)
        if isinstance(node.op, ast.Not):
            return op(operand), 1
        if not _is_number(operand):
            raise UnsafeExpressionError(f"unary {type(node.op).__name__} needs a number")
        return _scalar(op(operand))

    def visit_BinOp(self, node: ast.BinOp, depth: int) -> _Weighted:
        op = _BINARY_OPS.get(type(node.op))
        if op is None:
            raise UnsafeExpressionError(f"operator {type(node.op).__name__} is not allowed")
        left, left_weight = self.visit(node.left, depth)
        right, right_weight = self.visit(node.right, depth)
        kind = type(node.op)
        sequences = (list, tuple, str)
        if kind is ast.Mult and isinstance(right, sequences) and _is_number(left):
            left, left_weight, right, right_weight = right, right_weight, left, left_weight
        if isinstance(left, sequences) or isinstance(right, sequences):
            return self._sequence_op(kind, op, left, left_weight, right, right_weight)
        if kind is ast.Pow:
            _check_power(left, right)
        elif kind is ast.Mult and _is_int(left) and _is_int(right):
            if left.bit_length() + right.bit_length() - 1 > MAX_INT_BITS:
                raise UnsafeExpressionError(f"integer is too large (more than {MAX_INT_BITS} bits)")
        return _scalar(op(left, right))

    @staticmethod
    def _sequence_op(kind, op, left, left_weight, right, right_weight) -> _Weighted:
        if kind is ast.Add and type(left) is type(right):
            weight = _check_weight(left_weight + right_weight - 1, "a concatenation")
            return op(left, right), weight
        if kind is ast.Mult and isinstance(left, (list, tuple, str)) and isinstance(right, int):
            count = max(int(right), 0)
            per_copy = left_weight - 1 if not isinstance(left, str) else len(left)
            weight = _check_weight(1 + count * per_copy, "a repetition")
            return op(left, count), weight
        if kind is ast.Mod and isinstance(left, str):
            raise UnsafeExpressionError("string formatting with % is not allowed")
        names = {ast.Add: "+", ast.Sub: "-", ast.Mult: "*", ast.Div: "/", ast.FloorDiv: "//",
                 ast.Mod: "%", ast.Pow: "**"}
        raise UnsafeExpressionError(
            f"unsupported operand types for {names[kind]}: {type(left).__name__} and {type(right).__name__}"
        )

    def visit_BoolOp(self, node: ast.BoolOp, depth: int) -> _Weighted:
        values = [self.visit(value, depth) for value in node.values]
        want = not isinstance(node.op, ast.And)
        # `a and b` is the first falsy value (else the last); `a or b` the first truthy one.
        for value in values[:-1]:
            if bool(value[0]) is want:
                return value
        return values[-1]

    def visit_Compare(self, node: ast.Compare, depth: int) -> _Weighted:
        # Comparing two bounded values costs at most their weight.
        left, _ = self.visit(node.left, depth)
        result = True
        for op_node, comparator in zip(node.ops, node.comparators):
            op = _COMPARE_OPS.get(type(op_node))
            if op is None:
                raise UnsafeExpressionError(f"comparison {type(op_node).__name__} is not allowed")
            right, _ = self.visit(comparator, depth)
            if result and not op(left, right):
                result = False
            left = right
        return result, 1

    def visit_Call(self, node: ast.Call, depth: int) -> _Weighted:
        if not isinstance(node.func, ast.Name) or node.func.id not in _BUILTINS:
            raise UnsafeExpressionError(
                f"call of {_describe(node.func)} is not allowed "
                f"(allowed: {', '.join(sorted(_BUILTINS))})"
            )
        if node.keywords:
            raise UnsafeExpressionError("keyword arguments are not allowed")
        args = [self.visit(arg, depth) for arg in node.args]
        return _call(node.func.id, args)


def _check_power(base: Any, exponent: Any) -> None:
    """Refuse an integer power whose result would exceed MAX_INT_BITS, before computing it.
    (Float powers cost nothing: they overflow instead.)"""
    if _is_int(base) and _is_int(exponent) and exponent > 0 and abs(base) > 1:
        # |base| ** exponent has at least (bits(base) - 1) * exponent + 1 bits.
        if (abs(base).bit_length() - 1) * exponent >= MAX_INT_BITS:
            raise UnsafeExpressionError(f"integer power is too large (more than {MAX_INT_BITS} bits)")


def _numbers(name: str, values: list) -> None:
    if not values or not all(_is_number(value) for value in values):
        raise UnsafeExpressionError(f"{name}() takes numbers, or one list of numbers")


def _call(name: str, args: list[_Weighted]) -> _Weighted:
    """Call one allowed builtin, refusing arguments whose result would cost too much."""
    values = [value for value, _ in args]
    function = _BUILTINS[name]
    if name in ("min", "max"):
        if len(values) == 1 and not isinstance(values[0], (list, tuple)):
            raise UnsafeExpressionError(f"{name}() of one argument takes a list of numbers")
        items = list(values[0]) if len(values) == 1 else values
        _numbers(name, items)
        return _scalar(function(items))
    if name == "sum":
        # Summing lists (`sum(x, [])`) is quadratic: only numbers are summed.
        if len(values) not in (1, 2) or not isinstance(values[0], (list, tuple)):
            raise UnsafeExpressionError("sum() takes a list of numbers (and a number to start from)")
        _numbers(name, list(values[0]) + values[1:] or [0])
        return _scalar(function(*values))
    if name in ("list", "tuple"):
        if len(values) == 1 and isinstance(values[0], str):
            # Each character becomes a one-character string.
            weight = _check_weight(1 + 2 * len(values[0]), f"{name}()")
            return function(values[0]), weight
        if len(values) == 1 and isinstance(values[0], (list, tuple)):
            return function(values[0]), args[0][1]
        if not values:
            return function(), 1
        raise UnsafeExpressionError(f"{name}() takes one list, tuple or string")
    if name == "range":
        if not values or not all(isinstance(value, int) for value in values):
            raise UnsafeExpressionError("range() takes integers")
        numbers = function(*values)  # lazy: nothing is built yet
        try:
            length = len(numbers)
        except OverflowError:
            length = MAX_WEIGHT + 1
        weight = _check_weight(1 + length, "range()")
        return list(numbers), weight
    if name == "len":
        if len(values) != 1 or not isinstance(values[0], (list, tuple, str)):
            raise UnsafeExpressionError("len() takes one list, tuple or string")
        return len(values[0]), 1
    if name == "round" and len(values) == 2 and isinstance(values[1], int) and abs(values[1]) > _MAX_ROUND_DIGITS:
        # round(n, -d) computes 10 ** d.
        raise UnsafeExpressionError(f"round() takes at most {_MAX_ROUND_DIGITS} digits")
    # abs, round, int, float: the work is bounded by their (bounded) arguments.
    return _scalar(function(*values))


def _describe(node: ast.AST) -> str:
    names = {
        "Attribute": "attribute access",
        "Lambda": "a lambda",
        "ListComp": "a list comprehension",
        "SetComp": "a set comprehension",
        "DictComp": "a dict comprehension",
        "GeneratorExp": "a generator expression",
        "Subscript": "subscripting",
        "NamedExpr": "an assignment expression",
        "JoinedStr": "an f-string",
        "Starred": "unpacking",
        "IfExp": "a conditional expression",
        "Dict": "a dict",
        "Set": "a set",
        "Await": "await",
        "Yield": "yield",
    }
    if isinstance(node, ast.Name):
        return repr(node.id)
    return names.get(type(node).__name__, type(node).__name__)
