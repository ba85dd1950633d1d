"""The ``llm`` and ``embedding`` node types: an OpenAI-compatible API over the registry's HTTP client.

``llm`` posts to ``{base_url}/chat/completions``, ``embedding`` to ``{base_url}/embeddings``, through
the shared client, so every connection is checked against the egress policy like the ``http``
node's. The API key (normally ``{"$secret": NAME}``) is sent as ``Authorization: Bearer`` and is
removed from every error message.

A 429 or 5xx answer is retried inside the handler, up to ``max_retries`` times, after the delay its
``Retry-After`` header asks for (seconds or an HTTP date; otherwise 0.5 s, 1 s, 2 s...), as long as
that delay is at most ``MAX_RETRY_AFTER_S``. When the retries are used up or the server asks for a
longer wait, the node fails with a retryable ``http_status`` error and its retry policy decides.
Other 4xx answers fail at once, not retryable, with the server's error message.
"""

from __future__ import annotations

import asyncio
import email.utils
import time
from datetime import UTC
from typing import Annotated, Any, Literal

import httpx
import msgspec

from service.engine.nodes.http_transport import EgressDenied
from service.engine.nodes.registry import NodeContext, NodeFailure, NodeRegistry

MAX_RETRY_AFTER_S = 30.0
"""The longest ``Retry-After`` the handler waits for itself; a longer one fails the attempt (retryable)."""
BASE_BACKOFF_S = 0.5


def _check_base_url(base_url: str) -> None:
    try:
        url = httpx.URL(base_url)
    except httpx.InvalidURL as exc:
        raise ValueError(f"invalid base_url {base_url!r}: {exc}") from None
    if url.scheme not in ("http", "https") or not url.host:
        raise ValueError(f"base_url must be an absolute http:// or https:// URL, got {base_url!r}")


class ChatMessage(msgspec.Struct, frozen=True, forbid_unknown_fields=True, omit_defaults=True):
    role: Literal["system", "user", "assistant", "tool", "developer"]
    content: str | list[dict[str, Any]]
    name: str | None = None
    tool_call_id: str | None = None


class LlmConfig(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    base_url: str
    model: str
    messages: Annotated[list[ChatMessage], msgspec.Meta(min_length=1)]
    api_key: str | None = None
    temperature: Annotated[float, msgspec.Meta(ge=0, le=2)] | None = None
    max_tokens: Annotated[int, msgspec.Meta(gt=0)] | None = None
    timeout_ms: Annotated[int, msgspec.Meta(gt=0)] = 60_000
    max_retries: Annotated[int, msgspec.Meta(ge=0, le=10)] = 2

    def __post_init__(self) -> None:
        _check_base_url(self.base_url)


class EmbeddingConfig(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    base_url: str
    model: str
    input: str | Annotated[list[str], msgspec.Meta(min_length=1)]
    api_key: str | None = None
    timeout_ms: Annotated[int, msgspec.Meta(gt=0)] = 60_000
    max_retries: Annotated[int, msgspec.Meta(ge=0, le=10)] = 2

    def __post_init__(self) -> None:
        _check_base_url(self.base_url)


def retry_after_seconds(value: str | None, now: float | None = None) -> float | None:
    """The delay a ``Retry-After`` header asks for (delta-seconds or an HTTP date), or None."""
    if not value:
        return None
    value = value.strip()
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    now = time.time() if now is None else now
    return max(0.0, when.timestamp() - now)


def _server_message(response: httpx.Response) -> str:
    """The server's own error message (OpenAI's ``{"error": {"message"}}`` or ``{"error": "..."}``),
    else the start of the body."""
    try:
        body = msgspec.json.decode(response.content)
    except msgspec.DecodeError:
        body = None
    if isinstance(body, dict):
        error = body.get("error")
        if isinstance(error, dict) and isinstance(error.get("message"), str):
            return str(error["message"])[:500]
        if isinstance(error, str):
            return error[:500]
        if isinstance(body.get("message"), str):
            return str(body["message"])[:500]
    return response.text[:200]


def _without_key(text: str, api_key: str | None) -> str:
    return text.replace(api_key, "[api_key]") if api_key else text


async def post_json(
    registry: NodeRegistry,
    url: str,
    payload: dict[str, Any],
    *,
    api_key: str | None,
    timeout_ms: int,
    max_retries: int,
) -> Any:
    """POST ``payload`` to ``url``; the decoded JSON answer, retried on 429/5xx as the module says.

    Raises ``NodeFailure`` (kinds of the ``http`` node: ``egress_denied``, ``http_timeout``,
    ``http_error``, ``http_status``, ``http_decode``), never quoting ``api_key``."""
    headers = {"accept": "application/json"}
    if api_key:
        headers["authorization"] = f"Bearer {api_key}"
    seconds = timeout_ms / 1000
    retries = 0
    while True:
        try:
            async with asyncio.timeout(seconds):
                response = await registry.http_client().post(
                    url, json=payload, headers=headers, timeout=httpx.Timeout(seconds)
                )
        except EgressDenied as exc:
            raise NodeFailure("egress_denied", f"POST {url}: {exc}", retryable=False) from None
        except (TimeoutError, httpx.TimeoutException):
            raise NodeFailure(
                "http_timeout", f"POST {url} timed out after {timeout_ms} ms", retryable=True
            ) from None
        except httpx.RequestError as exc:
            detail = _without_key(str(exc) or type(exc).__name__, api_key)
            raise NodeFailure("http_error", f"POST {url} failed: {detail}", retryable=True) from None
        code = response.status_code
        if 200 <= code < 300:
            try:
                return msgspec.json.decode(response.content)
            except msgspec.DecodeError as exc:
                raise NodeFailure(
                    "http_decode", f"POST {url} answered {code} with invalid JSON: {exc}", retryable=False
                ) from None
        message = _without_key(_server_message(response), api_key)
        if code != 429 and code < 500:
            raise NodeFailure("http_status", f"POST {url} answered {code}: {message}", retryable=False)
        asked = retry_after_seconds(response.headers.get("retry-after"))
        delay = asked if asked is not None else BASE_BACKOFF_S * 2**retries
        if retries >= max_retries or delay > MAX_RETRY_AFTER_S:
            wait = f" (Retry-After: {asked:.0f} s)" if asked is not None else ""
            tries = f" after {retries + 1} tries" if retries else ""
            raise NodeFailure(
                "http_status", f"POST {url} answered {code}{tries}{wait}: {message}", retryable=True
            )
        retries += 1
        await asyncio.sleep(delay)


def _endpoint(base_url: str, path: str) -> str:
    return base_url.rstrip("/") + path


def _invalid(url: str, what: str) -> NodeFailure:
    return NodeFailure("invalid_response", f"POST {url}: {what}", retryable=False)


def make_llm_handler(registry: NodeRegistry) -> Any:
    """The ``llm`` handler, sending through ``registry``'s shared client."""

    async def llm(config: LlmConfig, ctx: NodeContext) -> dict[str, Any]:
        """A chat completion from an OpenAI-compatible API; output ``{text, model, usage, finish_reason}``."""
        url = _endpoint(config.base_url, "/chat/completions")
        payload: dict[str, Any] = {
            "model": config.model,
            "messages": msgspec.to_builtins(config.messages),
        }
        if config.temperature is not None:
            payload["temperature"] = config.temperature
        if config.max_tokens is not None:
            payload["max_tokens"] = config.max_tokens
        body = await post_json(
            registry,
            url,
            payload,
            api_key=config.api_key,
            timeout_ms=config.timeout_ms,
            max_retries=config.max_retries,
        )
        try:
            choice = body["choices"][0]
            message = choice.get("message") or {}
            text = message.get("content")
        except (KeyError, IndexError, TypeError, AttributeError):
            raise _invalid(url, "the answer has no choices[0]") from None
        if text is not None and not isinstance(text, str):
            raise _invalid(url, "choices[0].message.content is not a string")
        return {
            "text": text if text is not None else "",
            "model": body.get("model", config.model),
            "usage": body.get("usage"),
            "finish_reason": choice.get("finish_reason"),
        }

    return llm


def make_embedding_handler(registry: NodeRegistry) -> Any:
    """The ``embedding`` handler, sending through ``registry``'s shared client."""

    async def embedding(config: EmbeddingConfig, ctx: NodeContext) -> dict[str, Any]:
        """Embeddings from an OpenAI-compatible API; output ``{vectors: [[...]], model, usage}``."""
        url = _endpoint(config.base_url, "/embeddings")
        body = await post_json(
            registry,
            url,
            {"model": config.model, "input": config.input},
            api_key=config.api_key,
            timeout_ms=config.timeout_ms,
            max_retries=config.max_retries,
        )
        data = body.get("data") if isinstance(body, dict) else None
        expected = 1 if isinstance(config.input, str) else len(config.input)
        if not isinstance(data, list) or len(data) != expected:
            raise _invalid(url, f"expected {expected} embedding(s) in 'data'")
        try:
            ordered = sorted(data, key=lambda item: item.get("index", 0))
            vectors = [[float(x) for x in item["embedding"]] for item in ordered]
        except (KeyError, TypeError, ValueError, AttributeError):
            raise _invalid(url, "an item of 'data' has no list of numbers as 'embedding'") from None
        return {"vectors": vectors, "model": body.get("model", config.model), "usage": body.get("usage")}

    return embedding
