"""Secrets (issue 11): stored encrypted per tenant with `flowledger secrets set`, resolved from
``{"$secret": NAME}`` only when the node runs, and never found afterwards in the event log, in
any API response or in the logs - even when the called server echoes the value back."""

from __future__ import annotations

import asyncio
import json
import os
import threading
import uuid
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import asyncpg
import pytest
from cryptography.fernet import Fernet

from tests.helpers.api import wait_ended
from tests.helpers.paths import FLOWLEDGER
from tests.helpers.servers import Servers
from tests.helpers.serving import serve_app


class _Echo(BaseHTTPRequestHandler):
    def do_GET(self) -> None:  # the server a careless integration might call: it echoes everything
        body = json.dumps({"path": self.path, "authorization": self.headers.get("Authorization")}).encode()
        self.send_response(200)
        self.send_header("content-type", "application/json")
        self.send_header("x-echo-auth", self.headers.get("Authorization", ""))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def echo_server() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Echo)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()


async def _set_secret(servers: Servers, key: str, name: str, value: str) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("FLOWLEDGER_")}
    env.update(
        FLOWLEDGER_DATABASE_URL=servers.database_url,
        FLOWLEDGER_SECRET_KEY=key,
        FLOWLEDGER_HOME=str(servers.home),
    )
    proc = await asyncio.create_subprocess_exec(
        FLOWLEDGER,
        "secrets",
        "set",
        name,
        env=env,
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
    )
    out, _ = await asyncio.wait_for(proc.communicate(value.encode() + b"\n"), 60)
    assert proc.returncode == 0, out


async def test_a_secret_is_used_but_never_recorded_returned_or_logged(
    servers: Servers, echo_server: str, capfd: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    key = Fernet.generate_key().decode()
    name = f"TOKEN_{uuid.uuid4().hex[:6].upper()}"
    value = f"s3cr3t-{uuid.uuid4().hex}"
    await _set_secret(servers, key, name, value)
    url_name = f"{name}_URL"
    await _set_secret(servers, key, url_name, f"http://127.0.0.1:9/x?t={value}")
    conn = await asyncpg.connect(servers.database_url)
    try:
        stored = await conn.fetchval("SELECT ciphertext FROM flowledger.secrets WHERE name = $1", name)
        assert stored is not None and value.encode() not in bytes(stored)  # encrypted at rest
    finally:
        await conn.close()

    async with serve_app(servers, secret_key=key, home=tmp_path) as api:
        wid = f"secret-{uuid.uuid4().hex[:8]}"
        spec = {
            "id": wid,
            "nodes": [
                {
                    "id": "call",
                    "type": "http",
                    "config": {
                        "method": "GET",
                        "url": {"$expr": f"join('', ['{echo_server}/echo?t=', inputs.nothing || ''])"},
                        "headers": {"Authorization": {"$secret": name}},
                    },
                },
                {
                    "id": "leak",
                    # an unreachable URL that carries the token: the error message quotes the URL
                    "type": "http",
                    "config": {"method": "GET", "url": {"$secret": url_name}},
                    "retry": {"max_attempts": 1},
                },
            ],
            "edges": [{"from": "call", "to": "leak"}],
        }
        assert (await api.post("/v1/workflows", json=spec)).status_code == 201
        run_id = (await api.post(f"/v1/workflows/{wid}/runs", json={})).json()["run_id"]
        events = await wait_ended(api, run_id)
        output = next(e for e in events if e["type"] == "node_execute_after_data")["data"]["output"]
        assert output["body"]["authorization"] == f"[secret {name}]"  # the server saw it; the log did not
        assert output["headers"]["x-echo-auth"] == f"[secret {name}]"
        error = next(
            e for e in events if e["type"] == "node_execute_after" and e["data"]["status"] == "failed"
        )
        assert f"[secret {url_name}]" in error["data"]["error"]["message"]

        responses = [
            await api.get(path)
            for path in (
                f"/v1/runs/{run_id}/events",
                f"/v1/runs/{run_id}",
                f"/v1/runs/{run_id}/state",
                f"/v1/runs/{run_id}/lineage",
                f"/v1/workflows/{wid}",
                "/v1/runs",
            )
        ]
        for response in responses:
            assert value not in response.text, response.request.url

    conn = await asyncpg.connect(servers.database_url)
    try:
        hits = await conn.fetchval(
            "SELECT count(*) FROM flowledger.events WHERE run_id = $1 AND data::text LIKE '%' || $2 || '%'",
            uuid.UUID(run_id),
            value,
        )
        assert hits == 0
    finally:
        await conn.close()
    captured = capfd.readouterr()
    assert value not in captured.out + captured.err


async def test_an_unknown_secret_fails_the_node_without_retrying(servers: Servers) -> None:
    async with serve_app(servers) as api:
        wid = f"nosecret-{uuid.uuid4().hex[:8]}"
        spec = {
            "id": wid,
            "nodes": [
                {
                    "id": "call",
                    "type": "http",
                    "config": {
                        "method": "GET",
                        "url": "http://127.0.0.1:9/",
                        "headers": {"A": {"$secret": "NOPE_NONE"}},
                    },
                    "retry": {"max_attempts": 3},
                }
            ],
        }
        assert (await api.post("/v1/workflows", json=spec)).status_code == 201
        run_id = (await api.post(f"/v1/workflows/{wid}/runs", json={})).json()["run_id"]
        events = await wait_ended(api, run_id)
        failures = [e["data"]["error"] for e in events if e["type"] == "node_execute_after"]
        assert len(failures) == 1 and failures[0]["kind"] == "unknown_secret"
        assert "NOPE_NONE" in failures[0]["message"]
