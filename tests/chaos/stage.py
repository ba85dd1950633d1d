"""Everything the drill runs and breaks, under one directory: an embedded PostgreSQL of its own,
a 3-node NATS cluster, the TCP proxy, and three ``flowledger serve`` instances with different
roles. Each fault has its injection and its healing here; ``heal_all`` brings everything back.

Layout of the directory (kept when the drill fails): ``postgres/postgres.log``,
``nats/n1..n3/nats-server.log``, ``instances/i1..i3.log`` (each instance's JSON log, all its
lives appended), and the drill's own ``drill.log``.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import time
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import psutil

from service.infra.embedded import EmbeddedPostgres
from tests.helpers.engine_process import ServeProcess
from tests.helpers.faulty_proxy import FaultyProxy
from tests.helpers.nats_cluster import NatsCluster

STREAM = "FLOWLEDGER"
SUBJECT_PREFIX = "flowledger.events"
LEASE_SECONDS = 5

# Three instances, three role sets: runs spread over two workers, the relay can fail over
# between i1 and i2, the projections between i1 and i3, and i3 serves the API and push only.
ROLES: dict[str, tuple[str, ...]] = {
    "i1": ("all",),
    "i2": ("worker", "relay"),
    "i3": ("api", "projections"),
}
PROXIED = "i2"
"""The instance that reaches PostgreSQL through the faulty proxy."""


@dataclass
class Exit:
    """An instance that exited without the drill killing it."""

    instance: str
    code: int | None
    at: float


class Stage:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.postgres = EmbeddedPostgres(root)
        self.cluster = NatsCluster(root / "nats")
        self.proxy: FaultyProxy | None = None
        self.instances: dict[str, ServeProcess] = {}
        self.database_url = ""
        self.unexpected_exits: list[Exit] = []
        self._killed: set[str] = set()
        self._t0 = time.monotonic()

    # -- bringing it up and down

    async def start(self) -> None:
        self.database_url = await asyncio.to_thread(self.postgres.start)
        await asyncio.to_thread(self.cluster.start)
        target = urlsplit(self.database_url)
        self.proxy = await FaultyProxy(target.hostname or "127.0.0.1", target.port or 5432).start()
        proxied_url = self.database_url.replace(f":{target.port}/", f":{self.proxy.port}/")
        log_dir = self.root / "instances"
        log_dir.mkdir(parents=True, exist_ok=True)
        for name, roles in ROLES.items():
            self.instances[name] = ServeProcess(
                name,
                database_url=proxied_url if name == PROXIED else self.database_url,
                nats_url=self.cluster.seed_url,
                home=self.root / "home",
                log_dir=log_dir,
                serve_args=[arg for role in roles for arg in ("--role", role)],
                env={
                    "FLOWLEDGER_LEASE_SECONDS": str(LEASE_SECONDS),
                    "FLOWLEDGER_NATS_REPLICAS": "3",
                    "FLOWLEDGER_NATS_STREAM": STREAM,
                    "FLOWLEDGER_NATS_SUBJECT_PREFIX": SUBJECT_PREFIX,
                    "FLOWLEDGER_PYTHON_WORKERS": "1",
                },
            )
        # The first one alone: it migrates the database and writes the admin token the others read.
        first, *others = self.instances.values()
        await first.start().wait_ready()
        for proc in others:
            proc.start()
        await asyncio.gather(*(proc.wait_ready() for proc in others))

    async def stop(self) -> None:
        for proc in self.instances.values():
            if proc.proc is not None and proc.proc.poll() is None:
                proc.proc.send_signal(signal.SIGINT)
        for proc in self.instances.values():
            if proc.proc is not None:
                try:
                    await asyncio.to_thread(proc.proc.wait, 20)
                except Exception:
                    proc.stop()
        if self.proxy is not None:
            await self.proxy.close()
        await asyncio.to_thread(self.cluster.stop)
        await asyncio.to_thread(self.postgres.stop)

    @property
    def auth_headers(self) -> dict[str, str]:
        return next(iter(self.instances.values())).auth_headers

    @property
    def base_urls(self) -> list[str]:
        return [proc.base_url for proc in self.instances.values()]

    # -- faults: each returns once the fault is healed

    async def kill9(self, name: str, down: float) -> None:
        proc = self.instances[name]
        self._killed.add(name)
        if proc.proc is not None and proc.proc.poll() is None:
            proc.kill9()
        await asyncio.sleep(down)
        await self._restart(name)
        self._killed.discard(name)

    async def postgres_immediate_stop(self, down: float) -> None:
        """SIGQUIT to the postmaster: what ``pg_ctl stop -m immediate`` sends (no checkpoint; the
        restart runs crash recovery). Then the same server again, on the same port."""
        pid = self.postgres.pid
        assert pid is not None, "the drill's PostgreSQL is not running"
        postmaster = psutil.Process(pid)
        postmaster.send_signal(signal.SIGQUIT)
        await asyncio.to_thread(postmaster.wait, 60)
        await asyncio.sleep(down)
        url = await asyncio.to_thread(self.postgres.start)
        assert url == self.database_url, f"PostgreSQL came back elsewhere: {url}"

    async def nats_node_down(self, name: str, down: float) -> None:
        await asyncio.to_thread(self.cluster.kill, name)
        await asyncio.sleep(down)
        await asyncio.to_thread(self.cluster.restart, name, 60.0)

    async def nats_cluster_down(self, down: float) -> None:
        for node in self.cluster.nodes:
            await asyncio.to_thread(self.cluster.kill, node.name)
        await asyncio.sleep(down)
        await asyncio.to_thread(self.cluster.start, 60.0)

    async def proxy_drop(self, down: float) -> int:
        assert self.proxy is not None
        reset = self.proxy.drop(down)
        await asyncio.sleep(down)
        return reset

    async def proxy_stall(self, down: float) -> None:
        assert self.proxy is not None
        self.proxy.stall(down)
        await asyncio.sleep(down)

    # -- supervision

    async def supervise(self) -> None:
        """Restart an instance that exited without the drill killing it (noting it), for ever."""
        while True:
            for name, proc in self.instances.items():
                if name in self._killed or proc.proc is None:
                    continue
                code = proc.proc.poll()
                if code is not None:
                    self.unexpected_exits.append(Exit(name, code, time.monotonic() - self._t0))
                    self._killed.add(name)
                    try:
                        await self._restart(name)
                    finally:
                        self._killed.discard(name)
            await asyncio.sleep(0.5)

    async def heal_all(self, timeout: float = 120.0) -> None:
        """Every server, node and instance up and ready, and the proxy forwarding."""
        if self.proxy is not None:
            self.proxy.heal()
        if self.postgres.pid is None or not psutil.pid_exists(self.postgres.pid):
            await asyncio.to_thread(self.postgres.start)
        if not all(node.running for node in self.cluster.nodes):
            for node in self.cluster.nodes:
                if node.running:
                    await asyncio.to_thread(self.cluster.kill, node.name)
            await asyncio.to_thread(self.cluster.start, 60.0)
        for name, proc in self.instances.items():
            if proc.proc is None or proc.proc.poll() is not None:
                await self._restart(name)
        await self.wait_ready(timeout)

    async def wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        async with httpx.AsyncClient(timeout=3) as http:
            for proc in self.instances.values():
                while True:
                    with contextlib.suppress(httpx.HTTPError):
                        if (await http.get(f"{proc.base_url}/ready")).status_code == 200:
                            break
                    if time.monotonic() > deadline:
                        raise AssertionError(
                            f"{proc.name} not ready within {timeout:.0f} s:\n{proc.log_tail()}"
                        )
                    await asyncio.sleep(0.2)

    async def _restart(self, name: str) -> None:
        proc = self.instances[name]
        proc.start()
        # Not ready while a dependency is down: the restart counts once the process is up.
        with contextlib.suppress(AssertionError):
            await proc.wait_ready(timeout=90)

    def pids(self) -> dict[int, str]:
        """pid -> instance name, for every life of every instance so far (from their logs)."""
        out: dict[int, str] = {}
        for name, proc in self.instances.items():
            for record in proc.log_records():
                if record.get("event") == "worker_started":
                    out[int(str(record["worker_id"]).split(":")[-2])] = name
        return out

    def env_for_cli(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("FLOWLEDGER_")}
        env.update(
            FLOWLEDGER_DATABASE_URL=self.database_url,
            FLOWLEDGER_NATS_URL=self.cluster.seed_url,
            FLOWLEDGER_HOME=str(self.root / "home"),
            FLOWLEDGER_LOG_FORMAT="json",
        )
        return env
