"""The embedded default servers: start, real connections, reuse, clean stop, data kept across restarts."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import asyncpg
import nats
import psutil
import pytest

from service.infra.embedded import EmbeddedNats, EmbeddedPostgres


def _processes_mentioning(home: Path) -> list[psutil.Process]:
    """Live postgres / nats-server processes whose command line mentions ``home``."""
    found = []
    for proc in psutil.process_iter(["name", "cmdline", "status"]):
        name = proc.info["name"] or ""
        if not (name.startswith("postgres") or name.startswith("nats-server")):
            continue
        if proc.info["status"] == psutil.STATUS_ZOMBIE:
            continue
        if any(str(home) in arg for arg in proc.info["cmdline"] or []):
            found.append(proc)
    return found


@pytest.fixture
def home(tmp_path: Path) -> Iterator[Path]:
    """A fresh home; whatever a failing test left running there is killed afterwards."""
    yield tmp_path
    leftovers = _processes_mentioning(tmp_path)
    for proc in leftovers:
        proc.kill()
    psutil.wait_procs(leftovers, timeout=10)


async def _use_postgres(dsn: str, *, create_table: bool) -> list[str]:
    conn = await asyncpg.connect(dsn, timeout=10)
    try:
        assert await conn.fetchval("SELECT 1") == 1
        assert await conn.fetchval("SELECT current_database()") == "flowledger"
        if create_table:
            await conn.execute("CREATE TABLE kept (id int PRIMARY KEY)")
            await conn.execute("INSERT INTO kept VALUES (42)")
        rows = await conn.fetch("SELECT tablename FROM pg_tables WHERE schemaname = 'public'")
        return [r["tablename"] for r in rows]
    finally:
        await conn.close()


async def _use_nats(url: str) -> None:
    nc = await nats.connect(url, connect_timeout=5, max_reconnect_attempts=0)
    try:
        info = await nc.jetstream().account_info()
        assert info.limits is not None
    finally:
        await nc.close()


def test_embedded_servers_start_reuse_stop_and_keep_data(home: Path) -> None:
    pg, ns = EmbeddedPostgres(home), EmbeddedNats(home)
    try:
        # (1) first start: both launched here and really usable
        dsn, nats_url = pg.start(), ns.start()
        assert dsn.startswith("postgresql://postgres@127.0.0.1:") and dsn.endswith("/flowledger")
        assert nats_url.startswith("nats://127.0.0.1:")
        assert pg.started_here and ns.started_here
        assert "kept" in asyncio.run(_use_postgres(dsn, create_table=True))
        asyncio.run(_use_nats(nats_url))

        # (2) a second pair on the same home reuses them, and its stop() leaves them running
        pg2, ns2 = EmbeddedPostgres(home), EmbeddedNats(home)
        assert pg2.start() == dsn and ns2.start() == nats_url
        assert not pg2.started_here and not ns2.started_here
        pg2.stop()
        ns2.stop()
        asyncio.run(_use_postgres(dsn, create_table=False))
        asyncio.run(_use_nats(nats_url))
    finally:
        # (3) stop via the owners: nothing of theirs may remain
        pg.stop()
        ns.stop()
    assert not pg.started_here and not ns.started_here
    assert _processes_mentioning(home) == []
    pg.stop()  # idempotent
    ns.stop()

    # (4) restart on the same home: same persisted ports, data kept
    pg3, ns3 = EmbeddedPostgres(home), EmbeddedNats(home)
    try:
        assert pg3.start() == dsn and ns3.start() == nats_url
        assert pg3.started_here and ns3.started_here
        assert "kept" in asyncio.run(_use_postgres(dsn, create_table=False))
        asyncio.run(_use_nats(nats_url))
    finally:
        pg3.stop()
        ns3.stop()
    assert _processes_mentioning(home) == []
