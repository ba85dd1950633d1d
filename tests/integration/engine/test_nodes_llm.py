"""The ``llm`` and ``embedding`` nodes against a real OpenAI-compatible server on 127.0.0.1
(tests/helpers/openai_server.py): output shapes, the API key, Retry-After, 5xx and 4xx, egress."""

from __future__ import annotations

import email.utils
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest

from service.config import NodeSettings
from service.engine.nodes import (
    InvalidNodeConfig,
    NodeContext,
    NodeFailure,
    NodeRegistry,
    default_registry,
)
from service.engine.nodes.openai_compat import MAX_RETRY_AFTER_S, retry_after_seconds
from tests.helpers.openai_server import FakeOpenAI, fake_embedding, fake_openai


@pytest.fixture
def fake() -> Iterator[FakeOpenAI]:
    with fake_openai(f"sk-test-{uuid.uuid4().hex}") as server:
        yield server


@pytest.fixture
async def registry() -> AsyncIterator[NodeRegistry]:
    registry = default_registry()  # bound to loopback by default: 127.0.0.1 is reachable
    yield registry
    await registry.aclose()


def ctx(node_type: str, secrets: dict[str, str] | None = None) -> NodeContext:
    return NodeContext(
        run_id="run-1",
        node_id="n1",
        node_type=node_type,
        attempt=1,
        document={"inputs": {}, "nodes": {}},
        secrets=secrets or {},
    )


async def run(registry: NodeRegistry, name: str, config: dict[str, Any]) -> Any:
    return await registry.execute(name, registry.parse_config(name, config), ctx(name))


def chat(fake: FakeOpenAI, **extra: Any) -> dict[str, Any]:
    return {
        "base_url": fake.base_url,
        "model": "tiny",
        "messages": [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hello"}],
        "api_key": fake.api_key,
        **extra,
    }


async def failure_of(registry: NodeRegistry, name: str, config: dict[str, Any]) -> NodeFailure:
    with pytest.raises(NodeFailure) as info:
        await run(registry, name, config)
    return info.value


# -- llm ---------------------------------------------------------------------------------------


async def test_llm_answers_text_model_usage_and_finish_reason(
    registry: NodeRegistry, fake: FakeOpenAI
) -> None:
    output = await run(registry, "llm", chat(fake, temperature=0.2, max_tokens=50))
    assert output == {
        "text": "echo: hello",
        "model": "tiny-0001",
        "usage": {
            "prompt_tokens": output["usage"]["prompt_tokens"],
            "completion_tokens": 3,
            "total_tokens": 9,
        },
        "finish_reason": "stop",
    }
    [request] = fake.requests
    assert request.path == "/v1/chat/completions"
    assert request.authorization == f"Bearer {fake.api_key}"
    assert request.body == {
        "model": "tiny",
        "messages": [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hello"}],
        "temperature": 0.2,
        "max_tokens": 50,
    }


async def test_llm_without_api_key_sends_no_authorization(registry: NodeRegistry, fake: FakeOpenAI) -> None:
    config = chat(fake)
    del config["api_key"]
    failure = await failure_of(registry, "llm", config)
    assert fake.requests[0].authorization is None
    assert failure.kind == "http_status" and not failure.retryable
    assert "401" in failure.message


async def test_a_429_with_retry_after_seconds_is_waited_for_then_retried(
    registry: NodeRegistry, fake: FakeOpenAI
) -> None:
    fake.fail_next(429, {"error": {"message": "rate limited"}}, {"Retry-After": "1"})
    output = await run(registry, "llm", chat(fake))
    assert output["text"] == "echo: hello"
    first, second = fake.requests
    assert second.at - first.at >= 0.95  # it waited the second the server asked for


async def test_a_429_with_retry_after_as_an_http_date_is_honoured(
    registry: NodeRegistry, fake: FakeOpenAI
) -> None:
    when = email.utils.formatdate(time.time() + 2, usegmt=True)  # whole seconds: 1 to 2 s from now
    fake.fail_next(429, {"error": {"message": "rate limited"}}, {"Retry-After": when})
    output = await run(
        registry,
        "embedding",
        {"base_url": fake.base_url, "model": "e", "input": "ab", "api_key": fake.api_key},
    )
    assert output["vectors"] == [fake_embedding("ab")]
    first, second = fake.requests
    assert second.at - first.at >= 0.9


async def test_a_5xx_is_retried_in_the_handler_then_fails_retryable(
    registry: NodeRegistry, fake: FakeOpenAI
) -> None:
    for _ in range(3):
        fake.fail_next(500, {"error": {"message": "overloaded"}})
    failure = await failure_of(registry, "llm", chat(fake, max_retries=2))
    assert len(fake.requests) == 3  # the first try and 2 retries (0.5 s, then 1 s apart)
    assert failure.kind == "http_status" and failure.retryable
    assert "500" in failure.message and "overloaded" in failure.message and "3 tries" in failure.message


async def test_one_500_then_success(registry: NodeRegistry, fake: FakeOpenAI) -> None:
    fake.fail_next(503, b"busy")
    assert (await run(registry, "llm", chat(fake)))["text"] == "echo: hello"
    assert len(fake.requests) == 2


async def test_a_retry_after_longer_than_the_bound_fails_the_attempt_retryable_at_once(
    registry: NodeRegistry, fake: FakeOpenAI
) -> None:
    fake.fail_next(429, {"error": {"message": "quota"}}, {"Retry-After": str(int(MAX_RETRY_AFTER_S) + 60)})
    started = time.monotonic()
    failure = await failure_of(registry, "llm", chat(fake))
    assert time.monotonic() - started < 5
    assert len(fake.requests) == 1
    assert failure.kind == "http_status" and failure.retryable
    assert "Retry-After: 90 s" in failure.message and "quota" in failure.message


async def test_a_400_fails_at_once_with_the_servers_message(registry: NodeRegistry, fake: FakeOpenAI) -> None:
    fake.fail_next(400, {"error": {"message": "max_tokens is too large: 999999", "type": "invalid_request"}})
    failure = await failure_of(registry, "llm", chat(fake))
    assert len(fake.requests) == 1
    assert failure.kind == "http_status" and not failure.retryable
    assert "400" in failure.message and "max_tokens is too large: 999999" in failure.message


async def test_an_error_message_never_quotes_the_api_key(registry: NodeRegistry, fake: FakeOpenAI) -> None:
    wrong = f"sk-wrong-{uuid.uuid4().hex}"
    failure = await failure_of(registry, "llm", chat(fake, api_key=wrong))  # the server quotes it back
    assert failure.kind == "http_status" and not failure.retryable
    assert "Incorrect API key provided" in failure.message
    assert wrong not in failure.message and "[api_key]" in failure.message


async def test_a_slow_server_times_out_retryable(registry: NodeRegistry, fake: FakeOpenAI) -> None:
    fake.delay_s = 1.0
    failure = await failure_of(registry, "llm", chat(fake, timeout_ms=200))
    assert failure.kind == "http_timeout" and failure.retryable


async def test_the_egress_policy_applies(fake: FakeOpenAI) -> None:
    registry = default_registry(NodeSettings(http_deny=("127.0.0.1",)))
    try:
        failure = await failure_of(registry, "llm", chat(fake))
    finally:
        await registry.aclose()
    assert failure.kind == "egress_denied" and not failure.retryable
    assert fake.requests == []


async def test_a_connection_refused_is_retryable(registry: NodeRegistry) -> None:
    failure = await failure_of(
        registry,
        "llm",
        {"base_url": "http://127.0.0.1:9/v1", "model": "m", "messages": [{"role": "user", "content": "x"}]},
    )
    assert failure.kind == "http_error" and failure.retryable


# -- embedding ---------------------------------------------------------------------------------


async def test_embedding_of_one_string_and_of_a_list(registry: NodeRegistry, fake: FakeOpenAI) -> None:
    one = await run(
        registry,
        "embedding",
        {"base_url": fake.base_url, "model": "e", "input": "hello", "api_key": fake.api_key},
    )
    assert one == {"vectors": [fake_embedding("hello")], "model": "e", "usage": {"prompt_tokens": 4}}
    many = await run(
        registry,
        "embedding",
        {"base_url": fake.base_url + "/", "model": "e", "input": ["a", "bb", "ccc"], "api_key": fake.api_key},
    )
    assert many["vectors"] == [fake_embedding("a"), fake_embedding("bb"), fake_embedding("ccc")]  # by index
    assert [r.path for r in fake.requests] == ["/v1/embeddings", "/v1/embeddings"]
    assert fake.requests[1].body == {"model": "e", "input": ["a", "bb", "ccc"]}


# -- configs -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "config", "expected"),
    [
        ("llm", {"base_url": "http://x/v1", "model": "m", "messages": [], "api_key": "k"}, "length >= 1"),
        (
            "llm",
            {"base_url": "ftp://x", "model": "m", "messages": [{"role": "user", "content": "x"}]},
            "base_url",
        ),
        (
            "llm",
            {"base_url": "http://x", "model": "m", "messages": [{"role": "king", "content": "x"}]},
            "role",
        ),
        (
            "llm",
            {"base_url": "http://x", "model": "m", "messages": [{"role": "user", "content": "x"}], "temp": 1},
            "temp",
        ),
        ("embedding", {"base_url": "http://x", "model": "m", "input": 3}, "input"),
        ("embedding", {"base_url": "http://x", "model": "m", "input": "x", "extra": 1}, "extra"),
    ],
)
def test_bad_configs_are_refused_naming_the_field(name: str, config: dict[str, Any], expected: str) -> None:
    with pytest.raises(InvalidNodeConfig) as info:
        default_registry().parse_config(name, config)
    assert expected in str(info.value) and name in str(info.value)


def test_retry_after_parsing() -> None:
    assert retry_after_seconds("3") == 3.0
    assert retry_after_seconds("0.5") == 0.5
    assert retry_after_seconds(None) is None and retry_after_seconds("soon") is None
    now = 1_700_000_000.0
    assert retry_after_seconds(email.utils.formatdate(now + 7, usegmt=True), now=now) == pytest.approx(7)
    assert retry_after_seconds(email.utils.formatdate(now - 7, usegmt=True), now=now) == 0.0


@pytest.mark.parametrize("name", ["llm", "embedding"])
def test_the_api_key_must_be_a_secret_in_a_workflow_spec(name: str) -> None:
    registry = default_registry()
    config: dict[str, Any] = {"base_url": "http://x/v1", "model": "m"}
    config |= {"messages": [{"role": "user", "content": "x"}]} if name == "llm" else {"input": "x"}
    for literal in ("sk-literal", {"$expr": "inputs.key"}):
        with pytest.raises(InvalidNodeConfig, match=r'api_key must be \{"\$secret": "NAME"\}'):
            registry.check_config(name, {**config, "api_key": literal})
    assert registry.check_config(name, {**config, "api_key": {"$secret": "AI_KEY"}}) is None
    assert registry.check_config(name, config) is not None  # no key at all: a server that needs none
