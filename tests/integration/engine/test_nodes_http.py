"""The ``http`` node against a real HTTP server on 127.0.0.1 (stdlib, in a background thread)."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import AsyncIterator, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from service.engine.nodes import NodeContext, NodeFailure, NodeRegistry, default_registry
from tests.helpers.serving import free_port

SLOW_SECONDS = 1.0


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, so the shared client reuses connections

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def reply(self, code: int, body: bytes, content_type: str, extra: dict[str, str] | None = None) -> None:
        self.send_response(code)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        for name, value in (extra or {}).items():
            self.send_header(name, value)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def route(self) -> None:
        path = self.path
        if path == "/json":
            body = json.dumps({"ok": True, "items": [1, 2]}).encode()
            self.reply(200, body, "application/json; charset=utf-8", {"X-Served-By": "test"})
        elif path == "/problem":
            self.reply(200, b'{"type": "about:blank"}', "application/problem+json")
        elif path == "/text":
            self.reply(200, "plain wörds".encode(), "text/plain; charset=utf-8")
        elif path == "/bad-json":
            self.reply(200, b"{not json", "application/json")
        elif path == "/empty-json":
            self.reply(200, b"", "application/json")
        elif path == "/redirect":
            self.reply(302, b"", "text/plain", {"Location": "/json"})
        elif path == "/missing":
            self.reply(404, b"no such thing", "text/plain")
        elif path == "/missing-long":
            self.reply(404, b"x" * 500, "text/plain")
        elif path == "/unavailable":
            self.reply(503, b"try later", "text/plain")
        elif path == "/ratelimited":
            self.reply(429, b"slow down", "text/plain")
        elif path == "/slow":
            time.sleep(SLOW_SECONDS)
            try:
                self.reply(200, b"late", "text/plain")
            except OSError:  # the client gave up first, as the test intends
                pass
        elif path == "/echo":
            length = int(self.headers.get("Content-Length") or 0)
            raw = self.rfile.read(length) if length else b""
            body = json.dumps(
                {
                    "method": self.command,
                    "json": json.loads(raw) if raw else None,
                    "content_type": self.headers.get("Content-Type"),
                    "x_token": self.headers.get("X-Token"),
                }
            ).encode()
            self.reply(201, body, "application/json")
        else:
            self.reply(404, b"unknown test route", "text/plain")

    do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = do_HEAD = route


class QuietServer(ThreadingHTTPServer):
    daemon_threads = True  # the /slow handler must not hold up shutdown

    def handle_error(self, request: Any, client_address: Any) -> None:
        pass  # clients hanging up early (timeouts) are expected here


@pytest.fixture(scope="module")
def server_url() -> Iterator[str]:
    server = QuietServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), name="test-http-server", daemon=True)
    thread.start()
    host, port = server.server_address[:2]
    try:
        yield f"http://{host!s}:{port}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


@pytest.fixture
async def registry() -> AsyncIterator[NodeRegistry]:
    registry = default_registry()
    yield registry
    await registry.aclose()


def ctx() -> NodeContext:
    return NodeContext(
        run_id="r", node_id="fetch", node_type="http", attempt=1, document={"inputs": {}, "nodes": {}}
    )


async def call(registry: NodeRegistry, **config: Any) -> Any:
    return await registry.execute("http", registry.parse_config("http", config), ctx())


async def failure(registry: NodeRegistry, **config: Any) -> NodeFailure:
    with pytest.raises(NodeFailure) as info:
        await call(registry, **config)
    return info.value


async def test_get_json_is_parsed(registry: NodeRegistry, server_url: str) -> None:
    output = await call(registry, method="GET", url=f"{server_url}/json")
    assert output["status_code"] == 200
    assert output["body"] == {"ok": True, "items": [1, 2]}
    assert output["headers"]["content-type"] == "application/json; charset=utf-8"
    assert output["headers"]["x-served-by"] == "test"


async def test_json_suffix_media_types_are_parsed(registry: NodeRegistry, server_url: str) -> None:
    output = await call(registry, method="GET", url=f"{server_url}/problem")
    assert output["body"] == {"type": "about:blank"}


async def test_non_json_body_is_text(registry: NodeRegistry, server_url: str) -> None:
    output = await call(registry, method="GET", url=f"{server_url}/text")
    assert (output["status_code"], output["body"]) == (200, "plain wörds")


async def test_empty_json_body_and_head_give_null(registry: NodeRegistry, server_url: str) -> None:
    assert (await call(registry, method="GET", url=f"{server_url}/empty-json"))["body"] is None
    head = await call(registry, method="HEAD", url=f"{server_url}/json")
    assert (head["status_code"], head["body"]) == (200, None)


async def test_post_sends_json_and_headers(registry: NodeRegistry, server_url: str) -> None:
    output = await call(
        registry,
        method="POST",
        url=f"{server_url}/echo",
        headers={"X-Token": "t0k"},
        json={"order": 7, "tags": ["a"]},
    )
    assert output["status_code"] == 201
    assert output["body"] == {
        "method": "POST",
        "json": {"order": 7, "tags": ["a"]},
        "content_type": "application/json",
        "x_token": "t0k",
    }
    put = await call(registry, method="PUT", url=f"{server_url}/echo")
    assert put["body"]["method"] == "PUT"
    assert put["body"]["json"] is None  # json: null sends no body


async def test_redirects_are_followed(registry: NodeRegistry, server_url: str) -> None:
    output = await call(registry, method="GET", url=f"{server_url}/redirect")
    assert (output["status_code"], output["body"]) == (200, {"ok": True, "items": [1, 2]})


async def test_404_fails_without_retry_and_quotes_the_body(registry: NodeRegistry, server_url: str) -> None:
    url = f"{server_url}/missing"
    error = await failure(registry, method="GET", url=url)
    assert (error.kind, error.message, error.retryable) == (
        "http_status",
        f"GET {url} answered 404: no such thing",
        False,
    )


async def test_status_failure_quotes_only_the_first_200_characters(
    registry: NodeRegistry, server_url: str
) -> None:
    url = f"{server_url}/missing-long"
    error = await failure(registry, method="DELETE", url=url)
    assert error.message == f"DELETE {url} answered 404: " + "x" * 200


@pytest.mark.parametrize(
    ("path", "code", "body"), [("/unavailable", 503, "try later"), ("/ratelimited", 429, "slow down")]
)
async def test_503_and_429_are_retryable(
    registry: NodeRegistry, server_url: str, path: str, code: int, body: str
) -> None:
    url = f"{server_url}{path}"
    error = await failure(registry, method="GET", url=url)
    assert (error.kind, error.message, error.retryable) == (
        "http_status",
        f"GET {url} answered {code}: {body}",
        True,
    )


async def test_invalid_json_from_the_server_fails(registry: NodeRegistry, server_url: str) -> None:
    error = await failure(registry, method="GET", url=f"{server_url}/bad-json")
    assert (error.kind, error.retryable) == ("http_decode", False)
    assert error.message.startswith(f"GET {server_url}/bad-json answered 200 with invalid JSON: ")


async def test_slow_server_times_out(registry: NodeRegistry, server_url: str) -> None:
    url = f"{server_url}/slow"
    started = time.monotonic()
    error = await failure(registry, method="GET", url=url, timeout_ms=150)
    elapsed = time.monotonic() - started
    assert (error.kind, error.message, error.retryable) == (
        "http_timeout",
        f"GET {url} timed out after 150 ms",
        True,
    )
    assert 0.14 <= elapsed < SLOW_SECONDS


async def test_connection_refused_is_a_retryable_transport_error(registry: NodeRegistry) -> None:
    port = free_port()  # nothing listens there
    url = f"http://127.0.0.1:{port}/x"
    error = await failure(registry, method="GET", url=url)
    assert (error.kind, error.retryable) == ("http_error", True)
    assert error.message.startswith(f"GET {url} failed: ")


async def test_client_is_shared_closed_by_aclose_and_recreated_on_demand(server_url: str) -> None:
    registry = default_registry()
    await call(registry, method="GET", url=f"{server_url}/json")
    client = registry.http_client()
    await call(registry, method="GET", url=f"{server_url}/text")
    assert registry.http_client() is client
    await registry.aclose()
    assert client.is_closed
    assert (await call(registry, method="GET", url=f"{server_url}/json"))["status_code"] == 200
    assert registry.http_client() is not client
    await registry.aclose()
    await registry.aclose()  # idempotent
