"""Deterministic tools the chat workflow can call."""

from __future__ import annotations

import ast
import operator
from collections.abc import Callable
from typing import Any

from langchain_core.tools import tool

_BINARY: dict[type[ast.operator], Callable[[Any, Any], Any]] = {
    ast.Add: operator.add,
    ast.Sub: operator.sub,
    ast.Mult: operator.mul,
    ast.Div: operator.truediv,
    ast.FloorDiv: operator.floordiv,
    ast.Mod: operator.mod,
    ast.Pow: operator.pow,
}
_UNARY: dict[type[ast.unaryop], Callable[[Any], Any]] = {
    ast.UAdd: operator.pos,
    ast.USub: operator.neg,
}
MAX_EXPRESSION = 200


class CalculatorError(ValueError):
    pass


def evaluate(expression: str) -> int | float:
    """Arithmetic only, walked over the AST: no names, calls or attribute access, ever."""
    if len(expression) > MAX_EXPRESSION:
        raise CalculatorError(f"expression longer than {MAX_EXPRESSION} characters")
    try:
        tree = ast.parse(expression, mode="eval")
    except SyntaxError as exc:
        raise CalculatorError(f"not an arithmetic expression: {expression!r}") from exc

    def walk(node: ast.AST) -> int | float:
        if isinstance(node, ast.Expression):
            return walk(node.body)
        if isinstance(node, ast.Constant) and isinstance(node.value, int | float):
            if isinstance(node.value, bool):
                raise CalculatorError(f"unsupported syntax in {expression!r}")
            return node.value
        if isinstance(node, ast.BinOp) and type(node.op) in _BINARY:
            left, right = walk(node.left), walk(node.right)
            if isinstance(node.op, ast.Pow) and abs(right) > 100:
                raise CalculatorError("exponent too large")
            try:
                return _BINARY[type(node.op)](left, right)  # type: ignore[no-any-return]
            except ZeroDivisionError as exc:
                raise CalculatorError("division by zero") from exc
        if isinstance(node, ast.UnaryOp) and type(node.op) in _UNARY:
            return _UNARY[type(node.op)](walk(node.operand))  # type: ignore[no-any-return]
        raise CalculatorError(f"unsupported syntax in {expression!r}")

    return walk(tree)


@tool
def calculator(expression: str) -> str:
    """Evaluate an arithmetic expression such as '12*7' or '(3+4)/2'."""
    result = evaluate(expression)
    if isinstance(result, float) and result.is_integer():
        result = int(result)
    return str(result)


TOOLS = {calculator.name: calculator}
