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

# Guards against values that would hang or exhaust memory (`9 ** 9 ** 9`,
# `[0] * 10 ** 12`): no real configuration comes near these.
_MAX_SEQUENCE_LENGTH = 1_000_000
_MAX_EXPONENT = 1024


def evaluate_value(text: str) -> Any:
    """Evaluate the text of one configuration value.

    Raises:
        UnsafeExpressionError: the text is not a plain value or uses a
            construct that is not allowed (the message says which).
        SyntaxError: the text does not parse.
    """
    stripped = _strip_trailing_comment(text.strip())
    if not stripped:
        raise UnsafeExpressionError("empty value")
    try:
        return _Interpreter().visit(ast.parse(stripped, mode="eval").body)
    except (UnsafeExpressionError, SyntaxError):
        # `cifar-10` or `../data/x` are not expressions of numbers: a bare
        # token like these is a string. `32-2` still evaluates to 30.
        if BARE_WORD.match(stripped):
            return stripped
        raise


def _strip_trailing_comment(text: str) -> str:
    """Drop a `# comment` that follows a bare word (Python syntax drops it elsewhere)."""
    match = re.match(r"^([A-Za-z0-9_\-./]+)\s+#.*$", text)
    return match.group(1) if match else text


class _Interpreter:
    """Evaluates the allowed subset of Python expression nodes."""

    def visit(self, node: ast.AST) -> Any:
        method = getattr(self, "visit_" + type(node).__name__, None)
        if method is None:
            raise UnsafeExpressionError(f"{_describe(node)} is not allowed in a config value")
        return method(node)

    def visit_Constant(self, node: ast.Constant) -> Any:
        if isinstance(node.value, (bytes, type(Ellipsis))):
            raise UnsafeExpressionError(f"{_describe(node)} is not allowed in a config value")
        return node.value

    def visit_Name(self, node: ast.Name) -> Any:
        if node.id in _CONSTANT_NAMES:
            return _CONSTANT_NAMES[node.id]
        raise UnsafeExpressionError(
            f"unknown name {node.id!r} (quote it if it is meant as a string)"
        )

    def visit_List(self, node: ast.List) -> list:
        return [self.visit(element) for element in node.elts]

    def visit_Tuple(self, node: ast.Tuple) -> tuple:
        return tuple(self.visit(element) for element in node.elts)

    def visit_UnaryOp(self, node: ast.UnaryOp) -> Any:
        op = _UNARY_OPS.get(type(node.op))
        if op is None:
            raise UnsafeExpressionError(f"operator {type(node.op).__name__} is not allowed")
        return op(self.visit(node.operand))

    def visit_BinOp(self, node: ast.BinOp) -> Any:
        op = _BINARY_OPS.get(type(node.op))
        if op is None:
            raise UnsafeExpressionError(f"operator {type(node.op).__name__} is not allowed")
        left, right = self.visit(node.left), self.visit(node.right)
        if isinstance(node.op, ast.Pow) and isinstance(right, (int, float)) and abs(right) > _MAX_EXPONENT:
            raise UnsafeExpressionError(f"exponent {right} is too large")
        if isinstance(node.op, ast.Mult):
            for sequence, count in ((left, right), (right, left)):
                if isinstance(sequence, (list, tuple, str)) and isinstance(count, int):
                    if len(sequence) * count > _MAX_SEQUENCE_LENGTH:
                        raise UnsafeExpressionError("repeated sequence is too long")
        return op(left, right)

    def visit_BoolOp(self, node: ast.BoolOp) -> Any:
        values = [self.visit(value) for value in node.values]
        if isinstance(node.op, ast.And):
            result = values[0]
            for value in values[1:]:
                result = result and value
            return result
        result = values[0]
        for value in values[1:]:
            result = result or value
        return result

    def visit_Compare(self, node: ast.Compare) -> bool:
        left = self.visit(node.left)
        for op_node, comparator in zip(node.ops, node.comparators):
            op = _COMPARE_OPS.get(type(op_node))
            if op is None:
                raise UnsafeExpressionError(f"comparison {type(op_node).__name__} is not allowed")
            right = self.visit(comparator)
            if not op(left, right):
                return False
            left = right
        return True

    def visit_Call(self, node: ast.Call) -> Any:
        if not isinstance(node.func, ast.Name) or node.func.id not in _BUILTINS:
            raise UnsafeExpressionError(
                f"call of {_describe(node.func)} is not allowed "
                f"(allowed: {', '.join(sorted(_BUILTINS))})"
            )
        if node.keywords:
            raise UnsafeExpressionError("keyword arguments are not allowed")
        args = [self.visit(arg) for arg in node.args]
        result = _BUILTINS[node.func.id](*args)
        if isinstance(result, range):
            if len(result) > _MAX_SEQUENCE_LENGTH:
                raise UnsafeExpressionError("range is too long")
            result = list(result)
        return result


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
