"""Config values known only when a node runs: ``{"$expr": "<JMESPath>"}`` (a value computed over the
node document) and ``{"$secret": "NAME"}`` (a secret of the run's tenant, decrypted at call time).

Both are resolved by the executor right before the handler runs, into a config that lives only
for that attempt: it is never recorded. Whatever a handler returns or raises is passed through
``redact`` before it is recorded or logged, so a secret's value never reaches the log, the API
or the logs even when a server echoes it back.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import msgspec
from jmespath import exceptions as jmespath_errors

from service.engine.nodes.expressions import ExpressionError, compile_expression, evaluate

EXPR_KEY = "$expr"
SECRET_KEY = "$secret"


def _marker(value: Any) -> tuple[str, str] | None:
    """``(kind, argument)`` when ``value`` is ``{"$expr": ...}`` or ``{"$secret": ...}``."""
    if isinstance(value, dict) and len(value) == 1:
        ((key, argument),) = value.items()
        if key in (EXPR_KEY, SECRET_KEY):
            if not isinstance(argument, str) or not argument:
                what = "a JMESPath expression" if key == EXPR_KEY else "a secret name"
                raise ExpressionError(f"{key} takes {what} string, got {argument!r}")
            return key, argument
    return None


def dynamic_values(value: Any, path: str = "config") -> list[tuple[str, str, str]]:
    """Every ``$expr`` / ``$secret`` in a config as (where, kind, argument); each expression must compile."""
    marker = _marker(value)
    if marker is not None:
        kind, argument = marker
        if kind == EXPR_KEY:
            try:
                compile_expression(argument)
            except ExpressionError as exc:
                raise ExpressionError(f"{path}: {exc}") from None
        return [(path, kind, argument)]
    if isinstance(value, dict):
        return [found for k, v in value.items() for found in dynamic_values(v, f"{path}.{k}")]
    if isinstance(value, list):
        return [found for i, v in enumerate(value) for found in dynamic_values(v, f"{path}[{i}]")]
    return []


def secret_names(value: Any) -> set[str]:
    return {argument for _where, kind, argument in dynamic_values(value) if kind == SECRET_KEY}


def resolve_config(value: Any, document: Any, secrets: Mapping[str, str] | None = None) -> Any:
    """``value`` with each ``$expr`` replaced by its value over ``document`` and each ``$secret``
    by its value from ``secrets`` (pure). ``ExpressionError`` for an expression that fails to
    evaluate; ``KeyError`` for a secret not in ``secrets``."""
    marker = _marker(value)
    if marker is not None:
        kind, argument = marker
        if kind == SECRET_KEY:
            return (secrets or {})[argument]
        try:
            return evaluate(argument, document)
        except (jmespath_errors.JMESPathError, TypeError) as exc:
            raise ExpressionError(f"{EXPR_KEY} {argument!r} failed: {exc}") from None
    if isinstance(value, dict):
        return {k: resolve_config(v, document, secrets) for k, v in value.items()}
    if isinstance(value, list):
        return [resolve_config(v, document, secrets) for v in value]
    return value


def redact(text: str, secrets: Mapping[str, str]) -> str:
    """``text`` with every secret value replaced by ``[secret NAME]`` (also in its JSON-escaped form)."""
    for name, secret in secrets.items():
        if not secret:
            continue
        text = text.replace(secret, f"[secret {name}]")
        escaped = msgspec.json.encode(secret).decode()[1:-1]
        if escaped != secret:
            text = text.replace(escaped, f"[secret {name}]")
    return text


def redact_encoded_output(output: Any, encoded: bytes, secrets: Mapping[str, str]) -> tuple[Any, bytes]:
    """``redact_output`` for an output whose JSON ``encoded`` is at hand: (value, its JSON)."""
    if not secrets:
        return output, encoded
    text = encoded.decode()
    cleaned = redact(text, secrets)
    if cleaned == text:
        return output, encoded
    return msgspec.json.decode(cleaned), cleaned.encode()


def redact_output(output: Any, secrets: Mapping[str, str]) -> Any:
    """A JSON value with every secret value inside its strings (and keys) redacted."""
    if not secrets:
        return output
    return redact_encoded_output(output, msgspec.json.encode(output), secrets)[0]
