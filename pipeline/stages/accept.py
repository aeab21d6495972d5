"""``quality.accept``: a small, safe expression over score columns, and best-of-n ranking.

Only comparisons of known column names with numbers, joined by ``and``/``or``/``not``, are
allowed (``clip_score >= 0.28 and scene_match == 1``); the expression is parsed with
``ast`` and evaluated by walking the tree, never by ``eval``. A comparison whose column is
null for a sample (``scene_match`` of a prompt that is not a scene prompt) holds: the
signal does not apply to it.
"""

from __future__ import annotations

import ast
import operator

_OPS = {ast.Gt: operator.gt, ast.GtE: operator.ge, ast.Lt: operator.lt, ast.LtE: operator.le,
        ast.Eq: operator.eq, ast.NotEq: operator.ne}
_HIGHER_IS_BETTER = (ast.Gt, ast.GtE, ast.Eq)


class AcceptError(ValueError):
    """An accept expression that is not allowed; the message says what is."""


def parse_accept(text: str, columns) -> Acceptance:
    """Check ``text`` against the allowed grammar and the scorers' ``columns``."""
    try:
        tree = ast.parse(text.strip(), mode="eval").body
    except SyntaxError as e:
        raise AcceptError(f"accept: {text!r} is not an expression ({e.msg})") from None
    _check(tree, set(columns), text)
    return Acceptance(text, tree)


def _check(node: ast.AST, columns: set[str], text: str) -> None:
    if isinstance(node, ast.BoolOp):
        for value in node.values:
            _check(value, columns, text)
    elif isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.Not):
        _check(node.operand, columns, text)
    elif isinstance(node, ast.Compare) and all(type(op) in _OPS for op in node.ops):
        for side in (node.left, *node.comparators):
            _check_operand(side, columns, text)
    else:
        raise AcceptError(f"accept: {text!r}: only comparisons (<, <=, ==, !=, >=, >) of "
                          "score columns with numbers, joined by and/or/not, are allowed")


def _check_operand(node: ast.AST, columns: set[str], text: str) -> None:
    if isinstance(node, ast.Name):
        if node.id not in columns:
            raise AcceptError(f"accept: {text!r}: {node.id!r} is not a column of the "
                              f"configured scorers ({', '.join(sorted(columns)) or 'none'})")
    elif not (_number(node) is not None):
        raise AcceptError(f"accept: {text!r}: compare columns with numbers only")


def _number(node: ast.AST) -> float | None:
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub):
        inner = _number(node.operand)
        return None if inner is None else -inner
    if isinstance(node, ast.Constant) and type(node.value) in (int, float, bool):
        return node.value
    return None


class Acceptance:
    """A parsed accept expression: whether scores pass, and how to rank failed draws."""

    def __init__(self, text: str, tree: ast.AST):
        self.text, self.tree = text, tree

    def __call__(self, scores: dict) -> bool:
        return self._eval(self.tree, scores)

    def _eval(self, node: ast.AST, scores: dict) -> bool:
        if isinstance(node, ast.BoolOp):
            results = (self._eval(v, scores) for v in node.values)
            return all(results) if isinstance(node.op, ast.And) else any(results)
        if isinstance(node, ast.UnaryOp):
            return not self._eval(node.operand, scores)
        left = _value(node.left, scores)
        for op, right_node in zip(node.ops, node.comparators):
            right = _value(right_node, scores)
            if left is not None and right is not None and not _OPS[type(op)](left, right):
                return False
            left = right
        return True

    def rank(self, scores: dict) -> tuple:
        """Best draw first when sorted descending: passing draws, then each compared column
        in the expression's order, oriented so that better is larger."""
        key = [float(self(scores))]
        for node in ast.walk(self.tree):
            if isinstance(node, ast.Compare) and isinstance(node.left, ast.Name):
                value = scores.get(node.left.id)
                sign = 1 if isinstance(node.ops[0], _HIGHER_IS_BETTER) else -1
                key.append(0.0 if value is None else sign * float(value))
        return tuple(key)


def _value(node: ast.AST, scores: dict):
    return scores.get(node.id) if isinstance(node, ast.Name) else _number(node)
