"""The ``http`` node's egress policy against a real HTTP server on 127.0.0.1: loopback allowed when
the service is bound to loopback, an explicit deny, a redirect to the metadata address, and a
name that resolves to a denied address (the connection goes to the checked address, never to a
second resolution)."""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from collections.abc import AsyncIterator, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import asyncpg
import pytest

from service.config import NodeSettings
from service.engine.nodes import NodeContext, NodeFailure, NodeRegistry, default_registry
from tests.helpers.engine_harness import engine_on
from tests.helpers.workflows import wf

HITS: list[str] = []


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def reply(self, code: int, body: bytes, extra: dict[str, str] | None = None) -> None:
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        for name, value in (extra or {}).items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self) -> None:
        HITS.append(self.path)
        if self.path == "/json":
            self.reply(200, b'{"ok": true}', {"X-Host": self.headers.get("Host", "")})
        elif self.path == "/to-metadata":
            self.reply(302, b"", {"Location": "http://169.254.169.254/latest/meta-data/"})
        elif self.path == "/to-json":
            self.reply(302, b"", {"Location": "/json"})
        else:
            self.reply(404, b"{}")


@pytest.fixture(scope="module")
def server_port() -> Iterator[int]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    try:
        yield int(server.server_address[1])
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


@pytest.fixture
async def registries() -> AsyncIterator[list[NodeRegistry]]:
    made: list[NodeRegistry] = []
    yield made
    for registry in made:
        await registry.aclose()


def make(registries: list[NodeRegistry], bound: str = "127.0.0.1", **rules: tuple[str, ...]) -> NodeRegistry:
    registry = default_registry(NodeSettings(**rules), service_host=bound)  # type: ignore[arg-type]
    registries.append(registry)
    return registry


async def get(registry: NodeRegistry, url: str) -> Any:
    config = registry.parse_config("http", {"method": "GET", "url": url, "timeout_ms": 5000})
    ctx = NodeContext(
        run_id="r", node_id="fetch", node_type="http", attempt=1, document={"inputs": {}, "nodes": {}}
    )
    return await registry.execute("http", config, ctx)


async def denied(registry: NodeRegistry, url: str) -> str:
    with pytest.raises(NodeFailure) as info:
        await get(registry, url)
    assert info.value.kind == "egress_denied", info.value
    assert info.value.retryable is False
    return info.value.message


async def test_loopback_is_reachable_when_the_service_is_bound_to_loopback(
    registries: list[NodeRegistry], server_port: int
) -> None:
    out = await get(make(registries), f"http://127.0.0.1:{server_port}/json")
    assert out["status_code"] == 200 and out["body"] == {"ok": True}
    redirected = await get(make(registries), f"http://127.0.0.1:{server_port}/to-json")
    assert redirected["body"] == {"ok": True}


async def test_loopback_is_denied_when_the_service_is_bound_elsewhere_unless_allowed_by_address(
    registries: list[NodeRegistry], server_port: int
) -> None:
    HITS.clear()
    url = f"http://127.0.0.1:{server_port}/json"
    message = await denied(make(registries, bound="0.0.0.0"), url)
    assert message == (
        f"GET {url}: refused to connect to 127.0.0.1:{server_port}: 127.0.0.1 is a loopback address, "
        "denied by default because the service is not bound to loopback (an address or CIDR entry in "
        "FLOWLEDGER_HTTP_ALLOW allows it)"
    )
    assert HITS == []  # refused before connecting
    allowed = make(registries, bound="0.0.0.0", http_allow=("127.0.0.1/32",))
    assert (await get(allowed, url))["status_code"] == 200


async def test_an_explicit_deny_refuses_the_host_naming_the_rule(
    registries: list[NodeRegistry], server_port: int
) -> None:
    HITS.clear()
    by_address = make(registries, http_deny=("127.0.0.0/8",))
    url = f"http://127.0.0.1:{server_port}/json"
    assert await denied(by_address, url) == (
        f"GET {url}: refused to connect to 127.0.0.1:{server_port}: "
        "127.0.0.1 matches FLOWLEDGER_HTTP_DENY entry '127.0.0.0/8'"
    )
    by_name = make(registries, http_deny=("localhost",))
    message = await denied(by_name, f"http://localhost:{server_port}/json")
    assert f"refused to connect to localhost:{server_port}: localhost (" in message
    assert message.endswith("matches FLOWLEDGER_HTTP_DENY entry 'localhost'")
    assert HITS == []
    not_listed = make(registries, http_allow=("api.example.com",))
    assert (await denied(not_listed, url)).endswith("127.0.0.1 matches no FLOWLEDGER_HTTP_ALLOW entry")


async def test_a_redirect_to_the_metadata_address_is_refused(
    registries: list[NodeRegistry], server_port: int
) -> None:
    HITS.clear()
    url = f"http://127.0.0.1:{server_port}/to-metadata"
    started = time.monotonic()
    message = await denied(make(registries), url)
    assert time.monotonic() - started < 2  # refused, not a connection attempt timing out
    assert message == (
        f"GET {url}: refused to connect to 169.254.169.254:80: 169.254.169.254 is a link-local or "
        "cloud metadata address, denied by default (an address or CIDR entry in FLOWLEDGER_HTTP_ALLOW "
        "allows it) (a redirect target)"
    )
    assert HITS == ["/to-metadata"]


async def test_the_connection_goes_to_the_address_that_was_checked(
    registries: list[NodeRegistry], server_port: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A name resolved by our resolver: the node connects to exactly the addresses it checked
    (``rebind.test`` exists in no DNS, so the request can only work through them), and a
    name with one denied address among its answers is refused whole."""
    loop = asyncio.get_running_loop()
    answers: dict[str, list[str]] = {
        "rebind.test": ["127.0.0.1"],
        "mixed.test": ["127.0.0.1", "169.254.169.254"],
    }
    real = loop.getaddrinfo

    async def resolve(host: Any, port: Any, *args: Any, **kwargs: Any) -> Any:
        if host in answers:
            return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", (a, port)) for a in answers[host]]
        return await real(host, port, *args, **kwargs)

    monkeypatch.setattr(loop, "getaddrinfo", resolve)
    registry = make(registries)
    out = await get(registry, f"http://rebind.test:{server_port}/json")
    assert out["status_code"] == 200 and out["headers"]["x-host"] == f"rebind.test:{server_port}"
    message = await denied(registry, f"http://mixed.test:{server_port}/json")
    assert "mixed.test (169.254.169.254) is a link-local or cloud metadata address" in message


async def test_a_denied_http_node_fails_its_run_without_retries(
    pool: asyncpg.Pool, schema: str, server_port: int
) -> None:
    spec = wf(
        "egress",
        [
            {
                "id": "fetch",
                "type": "http",
                "config": {"method": "GET", "url": f"http://127.0.0.1:{server_port}/to-metadata"},
                "retry": {"max_attempts": 3, "initial_backoff_ms": 10},
            }
        ],
        [],
    )
    async with engine_on(pool, schema) as engine:
        await engine.register(spec)
        events = await engine.wait_ended(await engine.start("egress"))
    errors = [e.data.error for e in events if e.type == "node_execute_after"]
    assert len(errors) == 1 and errors[0].kind == "egress_denied" and errors[0].retryable is False
    assert events[-1].data.status == "failed"
