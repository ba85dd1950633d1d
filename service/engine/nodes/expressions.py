"""JMESPath for node configs: checked when a config is parsed, evaluated over the run document.

Every expression is compiled once (cached) and checked beyond JMESPath's own
parser: calls to unknown functions and calls with the wrong number of
arguments are found at config-parse time, not when a run reaches the node.
"""

from __future__ import annotations

import functools
from typing import Any

import jmespath
from jmespath import exceptions as jmespath_errors
from jmespath import functions as jmespath_functions

# Function name -> signature list, as JMESPath's interpreter will see it.
_FUNCTION_TABLE: dict[str, Any] = jmespath_functions.Functions.FUNCTION_TABLE


class ExpressionError(ValueError):
    """An expression that does not compile, or that calls a function wrongly."""


def _describe_parse_error(exc: Exception) -> str:
    # jmespath's own messages span several lines with a caret underline; a
    # config error must fit on one line in an API problem detail or a log.
    if isinstance(exc, jmespath_errors.EmptyExpressionError):
        return "the expression is empty"
    if isinstance(exc, jmespath_errors.IncompleteExpressionError):
        return "the expression is incomplete"
    if isinstance(exc, jmespath_errors.LexerError):
        return f"{exc.message} at column {exc.lexer_position}"
    if isinstance(exc, jmespath_errors.ParseError):
        return f"{exc.msg} at column {exc.lex_position} (token {exc.token_value!r})"
    return str(exc).splitlines()[0] if str(exc) else type(exc).__name__


def _check_functions(node: dict[str, Any], expression: str) -> None:
    if node.get("type") == "function_expression":
        name = node["value"]
        spec = _FUNCTION_TABLE.get(name)
        if spec is None:
            known = ", ".join(sorted(_FUNCTION_TABLE))
            raise ExpressionError(
                f"invalid JMESPath expression {expression!r}: unknown function {name}(); known functions: {known}"
            )
        signature = spec["signature"]
        given = len(node["children"])
        if signature and signature[-1].get("variadic"):
            if given < len(signature):
                raise ExpressionError(
                    f"invalid JMESPath expression {expression!r}: {name}() takes at least "
                    f"{len(signature)} arguments, got {given}"
                )
        elif given != len(signature):
            raise ExpressionError(
                f"invalid JMESPath expression {expression!r}: {name}() takes {len(signature)} "
                f"argument{'s' if len(signature) != 1 else ''}, got {given}"
            )
    for child in node.get("children", ()):
        if isinstance(child, dict):
            _check_functions(child, expression)


@functools.lru_cache(maxsize=1024)
def compile_expression(expression: str) -> Any:
    """The compiled expression; raises :class:`ExpressionError` (a ``ValueError``) naming the problem."""
    try:
        parsed = jmespath.compile(expression)
    except jmespath_errors.JMESPathError as exc:
        raise ExpressionError(
            f"invalid JMESPath expression {expression!r}: {_describe_parse_error(exc)}"
        ) from None
    _check_functions(parsed.parsed, expression)
    return parsed


def evaluate(expression: str, document: Any) -> Any:
    """Evaluate over ``document``; JMESPath runtime errors (wrong argument types) raise ``JMESPathError``."""
    return compile_expression(expression).search(document)


def is_truthy(value: Any) -> bool:
    """JMESPath truthiness: false only for null, false, "", [] and {} (so ``0`` is true)."""
    if value is None or value is False:
        return False
    if isinstance(value, str | list | tuple | dict):
        return len(value) > 0
    return True
