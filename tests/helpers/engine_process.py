"""Real ``flowledger serve`` processes for crash tests.

The service always uses schema ``flowledger`` and stream ``FLOWLEDGER``, so a test
that runs it as a process isolates it by database (``tests.helpers.databases.scratch_database``)
and by nats-server (a private embedded one, see the test module), not by schema/stream.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import subprocess
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import httpx
import psutil

from service.infra.db import Conn
from tests.helpers.paths import FLOWLEDGER
from tests.helpers.serving import free_port


async def wait_sessions_gone(conn: Conn, *, ours: str, timeout: float = 30.0) -> None:
    """Wait until every session on ``conn``'s database is one of ours (``application_name`` ``ours``).

    After a ``kill -9`` a COMMIT the dead client had already sent can still be
    executed by its backend; once every backend of the dead process has gone,
    the set of committed events is final.
    """
    sql = (
        "SELECT count(*) FROM pg_stat_activity "
        "WHERE datname = current_database() AND backend_type = 'client backend' "
        "AND coalesce(application_name, '') <> $1"
    )
    deadline = time.monotonic() + timeout
    while (others := await conn.fetchval(sql, ours)) > 0:
        if time.monotonic() > deadline:
            raise AssertionError(f"{others} sessions of the killed process are still on the database")
        await asyncio.sleep(0.05)


def _db_token(database_url: str) -> str:
    return "".join(c for c in database_url.rsplit("/", 1)[-1] if c.isalnum())


class ServeProcess:
    """One ``flowledger serve`` subprocess; its JSON log goes to ``<log_dir>/<name>.log``.

    ``serve_args`` are added to ``serve`` (e.g. ``--role``); ``env`` overrides the environment
    built here. ``start()`` may be called again after the process died: same port, same log.
    """

    def __init__(
        self,
        name: str,
        *,
        database_url: str,
        nats_url: str,
        home: Path,
        log_dir: Path,
        processes: str = "1",
        serve_args: Sequence[str] = (),
        env: Mapping[str, str] | None = None,
    ) -> None:
        self.name = name
        self.port = free_port()
        self.base_url = f"http://127.0.0.1:{self.port}"
        self.log_path = log_dir / f"{name}.log"
        full_env = {k: v for k, v in os.environ.items() if not k.startswith("FLOWLEDGER_")}
        full_env.update(
            FLOWLEDGER_DATABASE_URL=database_url,
            FLOWLEDGER_NATS_URL=nats_url,
            FLOWLEDGER_HOME=str(home),
            FLOWLEDGER_LOG_FORMAT="json",
            FLOWLEDGER_LEASE_SECONDS="4",  # recovery after a kill -9 waits for the lease
            FLOWLEDGER_PROCESSES=processes,  # the tests kill and inspect this very process
            # One stream per database: each test's log is a different log.
            FLOWLEDGER_NATS_STREAM=f"CRASH_{_db_token(database_url)}",
            FLOWLEDGER_NATS_SUBJECT_PREFIX=f"crash{_db_token(database_url)}.events",
        )
        full_env.update(env or {})
        self._env = full_env
        self._serve_args = list(serve_args)
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def auth_headers(self) -> dict[str, str]:
        """The admin token the first ``serve`` on this database wrote under the home."""
        token = (Path(self._env["FLOWLEDGER_HOME"]) / "admin.token").read_text().strip()
        return {"Authorization": f"Bearer {token}"}

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def start(self) -> ServeProcess:
        with self.log_path.open("ab") as log:  # the child keeps its own descriptor
            self.proc = subprocess.Popen(
                [FLOWLEDGER, "serve", "--port", str(self.port), *self._serve_args],
                env=self._env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        return self

    async def wait_ready(self, timeout: float = 60.0) -> None:
        """Poll ``/ready`` until 200; fails at once if the process exits."""
        assert self.proc is not None
        deadline = time.monotonic() + timeout
        async with httpx.AsyncClient(base_url=self.base_url, timeout=2.0) as client:
            while time.monotonic() < deadline:
                if self.proc.poll() is not None:
                    raise AssertionError(
                        f"{self.name} exited with {self.proc.returncode} before ready:\n{self.log_tail()}"
                    )
                with contextlib.suppress(httpx.TransportError):
                    if (await client.get("/ready")).status_code == 200:
                        return
                await asyncio.sleep(0.05)
        raise AssertionError(f"{self.name}: /ready never answered 200:\n{self.log_tail()}")

    def kill9(self) -> None:
        """SIGKILL: no shutdown code runs, leases are not released."""
        assert self.proc is not None
        os.kill(self.proc.pid, signal.SIGKILL)
        self.proc.wait(timeout=10)

    async def interrupt(self, timeout: float = 30.0) -> int:
        """SIGINT (Ctrl-C) and wait for the exit code."""
        assert self.proc is not None
        self.proc.send_signal(signal.SIGINT)
        return await asyncio.to_thread(self.proc.wait, timeout)

    def stop(self) -> None:
        """Kill the process (and any child) if it is still alive; for ``finally`` blocks."""
        if self.proc is None or self.proc.poll() is not None:
            return
        with contextlib.suppress(psutil.Error):
            for child in psutil.Process(self.proc.pid).children(recursive=True):
                with contextlib.suppress(psutil.Error):
                    child.kill()
        self.proc.kill()
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(timeout=10)

    def log_records(self) -> list[dict[str, Any]]:
        records: list[dict[str, Any]] = []
        if not self.log_path.exists():
            return records
        for line in self.log_path.read_text(errors="replace").splitlines():
            try:
                record = json.loads(line)
            except ValueError:
                record = {"event": line, "level": "unparsed"}
            records.append(record if isinstance(record, dict) else {"event": line, "level": "unparsed"})
        return records

    def problems(self) -> list[dict[str, Any]]:
        """Log records at warning level or above, tracebacks, and lines that are not JSON."""
        return [
            r
            for r in self.log_records()
            if r.get("level") in ("warning", "error", "critical", "unparsed") or "exception" in r
        ]

    def worker_id(self, wait_s: float = 10.0) -> str:
        deadline = time.monotonic() + wait_s  # the worker starts just after /ready turns 200
        while True:
            for r in self.log_records():
                if r.get("event") == "worker_started":
                    return str(r["worker_id"])
            if time.monotonic() > deadline:
                break
            time.sleep(0.05)
        raise AssertionError(f"{self.name} logged no worker_started:\n{self.log_tail()}")

    def log_tail(self, lines: int = 40) -> str:
        if not self.log_path.exists():
            return "(no log)"
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
