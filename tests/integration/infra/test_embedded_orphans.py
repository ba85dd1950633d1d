"""Embedded servers never outlive the process that started them, even after its ``kill -9``,
and a server left behind by a dead owner is stopped and started afresh, never adopted.

Real processes throughout: ``flowledger serve`` as the user runs it, and a helper process
that starts the servers with the parent-death signal switched off to fabricate an orphan.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import nats
import psutil
import pytest

from service.infra.embedded import EmbeddedNats, EmbeddedPostgres
from tests.helpers.paths import FLOWLEDGER
from tests.helpers.serving import free_port

pytestmark = pytest.mark.slow

GONE_WITHIN_S = 10.0


def _env(home: Path, **extra: str) -> dict[str, str]:
    """No FLOWLEDGER_* URL: the process under test starts the embedded servers itself."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("FLOWLEDGER_")}
    env.update(FLOWLEDGER_HOME=str(home), FLOWLEDGER_LOG_FORMAT="json", FLOWLEDGER_PROCESSES="1", **extra)
    return env


def _alive(proc: psutil.Process) -> bool:
    try:
        return proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def _servers_under(home: Path) -> list[psutil.Process]:
    """Live postgres / nats-server processes whose command line names a path under ``home``."""
    found = []
    for proc in psutil.process_iter(["name", "cmdline"]):
        name = proc.info["name"] or ""
        if not name.startswith(("postgres", "nats-server", "initdb")) or not _alive(proc):
            continue
        if any(str(home) in arg for arg in proc.info["cmdline"] or []):
            found.append(proc)
    return found


def _wait_all_gone(procs: list[psutil.Process], timeout: float = GONE_WITHIN_S) -> list[psutil.Process]:
    """Wait up to ``timeout`` for ``procs`` to exit (a zombie counts as gone); returns the rest."""
    deadline = time.monotonic() + timeout
    while (alive := [p for p in procs if _alive(p)]) and time.monotonic() < deadline:
        time.sleep(0.05)
    return alive


def _describe(procs: list[psutil.Process]) -> list[str]:
    described = []
    for proc in procs:
        try:
            described.append(f"{proc.pid} {' '.join(proc.cmdline())[:150]}")
        except psutil.Error:
            described.append(f"{proc.pid} (gone meanwhile)")
    return described


def _owner(home: Path, server: str) -> dict[str, int]:
    record = json.loads((home / server / "owner.json").read_text())
    return {"owner": int(record["owner"]), "server": int(record["server"])}


@pytest.fixture
def home(tmp_path: Path) -> Iterator[Path]:
    """A fresh home; whatever a failing test left running under it is killed afterwards."""
    yield tmp_path / "home"
    leftovers = _servers_under(tmp_path)
    for proc in leftovers:
        proc.kill()
    psutil.wait_procs(leftovers, timeout=10)


# -- kill -9 of serve ---------------------------------------------------------------------------------


class _Serve:
    """One ``flowledger serve`` process on ``home``, its JSON log in ``home/../serve-<n>.log``."""

    def __init__(self, home: Path, n: int) -> None:
        self.port = free_port()
        self.log_path = home.parent / f"serve-{n}.log"
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(
                [FLOWLEDGER, "serve"],
                env=_env(home, FLOWLEDGER_HTTP_PORT=str(self.port)),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
            )

    def wait_ready(self, timeout: float = 90.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"serve exited with {self.proc.returncode}:\n{self.log_tail()}")
            try:
                if httpx.get(f"http://127.0.0.1:{self.port}/ready", timeout=2).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.1)
        raise AssertionError(f"/ready never answered 200:\n{self.log_tail()}")

    def log_tail(self) -> str:
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-20:])

    def events(self) -> list[str]:
        events = []
        for line in self.log_path.read_text(errors="replace").splitlines():
            try:
                record = json.loads(line)
            except ValueError:
                continue
            if isinstance(record, dict):
                events.append(str(record.get("event")))
        return events

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(timeout=10)


def test_kill_9_of_serve_takes_its_embedded_servers_with_it(home: Path) -> None:
    serve = _Serve(home, 1)
    try:
        serve.wait_ready()
        # Everything serve started: the postmaster and its backends, and nats-server.
        family = psutil.Process(serve.proc.pid).children(recursive=True)
        names = sorted({p.name() for p in family})
        assert any(n.startswith("postgres") for n in names) and "nats-server" in names, names
        for server in ("postgres", "nats"):
            assert _owner(home, server)["owner"] == serve.proc.pid
        assert {p.pid for p in _servers_under(home)} <= {p.pid for p in family}

        os.kill(serve.proc.pid, signal.SIGKILL)  # no shutdown code of serve runs
        serve.proc.wait(timeout=10)

        left = _wait_all_gone(family)
        assert left == [], f"still running {GONE_WITHIN_S:g} s after kill -9 of serve: {_describe(left)}"
        assert _servers_under(home) == []
        # Stopped, not killed: PostgreSQL got its fast-shutdown request and shut down cleanly.
        pg_log = (home / "postgres" / "postgres.log").read_text(errors="replace")
        assert "received fast shutdown request" in pg_log
        assert "database system is shut down" in pg_log
    finally:
        serve.kill()

    # The next serve on this home starts its own servers: nothing left over to stop.
    again = _Serve(home, 2)
    try:
        again.wait_ready()
        assert "embedded_orphan_stopping" not in again.events()
        again.proc.send_signal(signal.SIGINT)
        assert again.proc.wait(timeout=60) == 0
        left = _wait_all_gone(_servers_under(home))
        assert left == [], _describe(left)
    finally:
        again.kill()


# -- an orphan of a crash -----------------------------------------------------------------------------

# Starts both servers as their owner, with the parent-death signal switched off (what a crash
# leaves behind where there is none: another OS, an older version, a server that ignored it).
_ORPHAN_MAKER = textwrap.dedent(
    """
    import json, sys, time
    from pathlib import Path

    import service.infra.embedded as embedded

    embedded._TIE_TO_OWNER = False
    home = Path(sys.argv[1])
    pg, ns = embedded.EmbeddedPostgres(home), embedded.EmbeddedNats(home)
    print(json.dumps({"dsn": pg.start(), "pg_pid": pg.pid, "nats": ns.start(), "nats_pid": ns.pid}), flush=True)
    time.sleep(600)
    """
)


def _start_orphan_maker(home: Path) -> tuple[subprocess.Popen[str], dict[str, Any]]:
    proc = subprocess.Popen(
        [sys.executable, "-c", _ORPHAN_MAKER, str(home)],
        env=_env(home),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    assert proc.stdout is not None
    line = proc.stdout.readline()  # the servers are up once it prints
    if not line:
        proc.wait(timeout=10)
        raise AssertionError(f"the helper exited with {proc.returncode} before starting the servers")
    return proc, json.loads(line)


async def _write_row(dsn: str) -> None:
    conn = await asyncpg.connect(dsn, timeout=10)
    try:
        await conn.execute("CREATE TABLE kept (id int PRIMARY KEY); INSERT INTO kept VALUES (7)")
    finally:
        await conn.close()


async def _read_row(dsn: str) -> int:
    conn = await asyncpg.connect(dsn, timeout=10)
    try:
        return int(await conn.fetchval("SELECT id FROM kept"))
    finally:
        await conn.close()


async def _use_nats(url: str) -> None:
    nc = await nats.connect(url, connect_timeout=5, max_reconnect_attempts=0)
    try:
        await nc.jetstream().account_info()
    finally:
        await nc.close()


def test_a_later_start_stops_an_orphan_and_starts_its_own(home: Path) -> None:
    helper, first = _start_orphan_maker(home)
    try:
        old_pg, old_nats = psutil.Process(first["pg_pid"]), psutil.Process(first["nats_pid"])
        asyncio.run(_write_row(first["dsn"]))

        # While their owner lives, another process reuses them, and its stop() leaves them be.
        reuser_pg, reuser_nats = EmbeddedPostgres(home), EmbeddedNats(home)
        assert reuser_pg.start() == first["dsn"] and reuser_nats.start() == first["nats"]
        assert not reuser_pg.started_here and not reuser_nats.started_here
        reuser_pg.stop()
        reuser_nats.stop()
        assert _alive(old_pg) and _alive(old_nats)
        assert _owner(home, "postgres") == {"owner": helper.pid, "server": old_pg.pid}
    finally:
        helper.kill()  # kill -9: the owner dies without stopping anything
        helper.wait(timeout=10)

    # Orphans now: still running, no longer children of their (dead) owner.
    time.sleep(0.5)
    assert _alive(old_pg) and _alive(old_nats)
    assert old_pg.ppid() != helper.pid and old_nats.ppid() != helper.pid

    pg, ns = EmbeddedPostgres(home), EmbeddedNats(home)
    try:
        dsn, url = pg.start(), ns.start()
        # Stopped and started again as this process's own: new pids, same persisted ports, same data.
        assert pg.started_here and ns.started_here
        assert (dsn, url) == (first["dsn"], first["nats"])
        assert pg.pid not in (None, old_pg.pid) and ns.pid not in (None, old_nats.pid)
        assert not _alive(old_pg) and not _alive(old_nats)
        assert _owner(home, "postgres") == {"owner": os.getpid(), "server": pg.pid}
        assert _owner(home, "nats") == {"owner": os.getpid(), "server": ns.pid}
        assert asyncio.run(_read_row(dsn)) == 7
        asyncio.run(_use_nats(url))
        # The orphaned postmaster was asked for a fast shutdown, not killed.
        assert "received fast shutdown request" in (home / "postgres" / "postgres.log").read_text()

        # Started here, so a further start elsewhere reuses them rather than taking them over.
        other = EmbeddedPostgres(home)
        assert other.start() == dsn and not other.started_here
    finally:
        pg.stop()
        ns.stop()
    assert _servers_under(home) == []
    assert not (home / "postgres" / "owner.json").exists() and not (home / "nats" / "owner.json").exists()
