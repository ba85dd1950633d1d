"""The service's live dependencies, started and stopped in order (the layer that wires the rest).

Start: the embedded PostgreSQL (only when no URL is configured), the pool,
migrations, the event store's committer, the workflow store, run queue and read
models; the embedded NATS (likewise), the NATS connection, the push hub, the
JetStream stream; then the background loops this process runs, each under
supervision: relay, projections, worker (and with it the scheduler of schedules).
Stop: the loops, the node registry's clients, the committer, push, NATS, the
pool, and last only the embedded servers this process started.

Imports: engine, followers, history and everything below them; nothing above.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import asyncpg
import structlog
from nats.aio.client import Client as NATS

from schemas.api import StreamHealth
from service.config import ALL_SCOPES, DEFAULT_TENANT, Settings
from service.engine.nodes import NodeRegistry, default_registry
from service.engine.scheduler import Scheduler
from service.engine.worker import Worker
from service.followers.projection_service import ProjectionService
from service.followers.push import PushHub
from service.followers.relay import Relay
from service.infra.db import DatabaseUnavailable, create_pool, ping
from service.infra.embedded import EmbeddedServerError, EmbeddedServers
from service.infra.keyfile import SecretKeyError, load_secret_key, write_admin_token
from service.infra.migrations import MigrationError, apply_migrations
from service.infra.nats import MessagingUnavailable, connect_nats, ensure_stream, stream_config
from service.retry import supervised
from service.store.event_store import EventStore
from service.store.keys import KeyStore
from service.store.read_models import ReadModels
from service.store.run_queue import RunQueue
from service.store.schedules import ScheduleStore
from service.store.secrets import SecretStore
from service.store.workflow_store import WorkflowStore
from service.urls import mask_url

log = structlog.get_logger(__name__)


STARTUP_ERRORS = (
    DatabaseUnavailable,
    MessagingUnavailable,
    EmbeddedServerError,
    MigrationError,
    SecretKeyError,
)
"""Failures with a one-line, human-actionable message: shown as such, never as a traceback."""


@dataclass
class Readiness:
    """What is up; ``/ready`` answers 200 only when all of it is."""

    postgres: bool = False
    migrations: bool = False
    nats: bool = False
    error: str | None = None
    stream: StreamHealth | None = None

    @property
    def ready(self) -> bool:
        return self.postgres and self.migrations and self.nats and self.error is None


class Runtime:
    """Owns every connection and background task of one service process."""

    def __init__(self, settings: Settings, *, create_embedded: bool = True) -> None:
        """``create_embedded=False``: for commands that read an existing log; with no URL
        configured and no embedded data under the home, ``start`` fails instead of creating it."""
        # A plain class, not a dataclass: Litestar inspects dataclass dependencies field by field.
        self.settings = settings
        self.readiness = Readiness()
        self.pool: asyncpg.Pool | None = None
        self.store: EventStore | None = None
        self.nats: NATS | None = None
        self.relay: Relay | None = None
        self.workflows: WorkflowStore
        self.queue: RunQueue
        # The http node reaches loopback by default only when this service is bound to it.
        self.registry: NodeRegistry = default_registry(
            settings.nodes, service_host=settings.http_host, home=settings.home
        )
        self.keys: KeyStore
        self._secrets: SecretStore | None = None
        self.admin_token_written: Path | None = None
        self.worker: Worker | None = None
        self.schedules: ScheduleStore
        self.scheduler: Scheduler | None = None
        self.projections: ProjectionService | None = None
        self.read_models: ReadModels
        self.push: PushHub | None = None
        self.database_url: str | None = None
        self.nats_url: str | None = None
        self._embedded = EmbeddedServers(settings.home, create=create_embedded)
        self._tasks: list[asyncio.Task[None]] = []

    async def start(
        self, *, relay: bool | None = None, worker: bool | None = None, projections: bool | None = None
    ) -> None:
        """Bring every dependency up; raises one of ``STARTUP_ERRORS`` on failure."""
        settings = self.settings
        self.database_url = await asyncio.to_thread(self._embedded.postgres_url, settings.database_url)
        self.pool = await create_pool(self.database_url)
        self.readiness.postgres = True
        log.info("postgres_connected", url=mask_url(self.database_url))
        async with self.pool.acquire() as conn:
            await apply_migrations(conn)
        self.readiness.migrations = True
        self.store = EventStore(self.pool)
        await self.store.start()
        self.workflows = WorkflowStore(self.pool)
        self.queue = RunQueue(self.store)
        self.read_models = ReadModels(self.store)
        self.keys = KeyStore(self.pool)
        self.schedules = ScheduleStore(self.pool)
        self.admin_token_written = await self._bootstrap_admin_key()

        self.nats_url = await asyncio.to_thread(self._embedded.nats_url, settings.nats_url)
        self.nats = await connect_nats(self.nats_url, on_reconnect=self._nats_reconnected)
        self.push = PushHub(
            self.nats, subject_prefix=settings.nats_subject_prefix, queue_size=settings.push_queue_size
        )
        await self.push.start()
        info = await ensure_stream(
            self.nats.jetstream(),
            stream_config(
                settings.nats_stream, settings.nats_subject_prefix, replicas=settings.nats_replicas
            ),
        )
        self.readiness.nats = True
        log.info(
            "nats_connected",
            url=mask_url(self.nats_url),
            stream=settings.nats_stream,
            replicas=info.config.num_replicas or 1,
            cluster=info.cluster.name if info.cluster else None,
        )

        if settings.relay_enabled if relay is None else relay:
            self.relay = Relay(
                self.store,
                self.nats,
                stream=settings.nats_stream,
                subject_prefix=settings.nats_subject_prefix,
            )
            self._tasks.append(asyncio.create_task(supervised("relay", self.relay.run), name="relay"))
        if settings.projections_enabled if projections is None else projections:
            self.projections = ProjectionService(self.store)
            self._tasks.append(
                asyncio.create_task(supervised("projections", self.projections.run), name="projections")
            )
        if settings.worker_enabled if worker is None else worker:
            self.worker = Worker(
                self.store,
                self.queue,
                self.workflows,
                self.registry,
                settings.worker,
                secrets=self.reveal_secrets,
            )
            self._tasks.append(asyncio.create_task(supervised("worker", self.worker.run), name="worker"))
            # An instance that executes runs also starts the runs of due schedules.
            self.scheduler = Scheduler(self.schedules, self.queue, self.workflows)
            self._tasks.append(
                asyncio.create_task(supervised("scheduler", self.scheduler.run), name="scheduler")
            )

    async def _bootstrap_admin_key(self) -> Path | None:
        """On a first start with auth on and no key at all: an admin key for the default tenant,
        its token written to ``<home>/admin.token`` (0600) for the client commands. Returns the
        file written, if one was."""
        if not self.settings.auth.enabled or await self.keys.any():
            return None
        _key, token = await self.keys.create(
            tenant=DEFAULT_TENANT, scopes=list(ALL_SCOPES), created_by="bootstrap"
        )
        path = await asyncio.to_thread(write_admin_token, self.settings.home, token)
        log.info("admin_token_written", path=str(path), tenant=DEFAULT_TENANT)
        return path

    async def secret_key(self) -> bytes:
        """The service's secret key (``FLOWLEDGER_SECRET_KEY`` or ``<home>/secret.key``, made once)."""
        return await asyncio.to_thread(load_secret_key, self.settings.secret_key, self.settings.home)

    async def reveal_secrets(self, tenant: str, names: set[str]) -> dict[str, str]:
        """The tenant's secrets ``names``, decrypted (the key is loaded on first use)."""
        if self._secrets is None:
            assert self.pool is not None
            self._secrets = SecretStore(self.pool, await self.secret_key())
        return await self._secrets.reveal(tenant, names)

    async def live_readiness(self) -> Readiness:
        """Readiness as of now: start-up done, and PostgreSQL, NATS and every background task
        (relay, projections, worker) still alive, not only when they started."""
        r = self.readiness
        if not r.ready:
            return r
        postgres, error = True, None
        try:
            assert self.pool is not None
            async with asyncio.timeout(2):
                await ping(self.pool)
        except Exception as exc:  # down, refusing, or too slow: not ready
            postgres, error = False, f"PostgreSQL does not answer: {type(exc).__name__}: {exc}"
        nats = self.nats is not None and self.nats.is_connected
        stream = None
        if not nats:
            error = error or "NATS is disconnected (reconnecting)"
        else:
            stream, stream_error = await self._stream_health()
            error = error or stream_error
        stopped = next((t for t in self._tasks if t.done()), None)
        if stopped is not None:
            cause = stopped.exception() if not stopped.cancelled() else None
            error = error or f"the {stopped.get_name()} task stopped: {cause!r}"
        return Readiness(postgres=postgres, migrations=r.migrations, nats=nats, error=error, stream=stream)

    async def _stream_health(self) -> tuple[StreamHealth | None, str | None]:
        """The stream as JetStream reports it, or why it did not: a stream that lost its quorum
        or its leader answers nothing (the relay can store nothing then)."""
        assert self.nats is not None
        name = self.settings.nats_stream
        try:
            async with asyncio.timeout(2):
                info = await self.nats.jetstream(timeout=2).stream_info(name)
        except Exception as exc:
            return None, f"JetStream does not answer for stream {name}: {type(exc).__name__}: {exc}"
        cluster = info.cluster
        peers = (cluster.replicas or []) if cluster is not None else []
        health = StreamHealth(
            name=name,
            replicas=info.config.num_replicas or 1,
            leader=cluster.leader if cluster is not None else None,
            replicas_current=1 + sum(1 for p in peers if p.current and not p.offline),
            messages=info.state.messages,
        )
        if health.replicas > 1 and health.leader is None:  # a server answered from what it last knew
            return health, f"stream {name} has no leader (its replicas lost their quorum)"
        return health, None

    def _nats_reconnected(self) -> None:
        if self.push is not None:
            self.push.reconnected()

    async def stop(self) -> None:
        """Stop everything started, newest first; safe to call after a partial start."""
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        self._tasks.clear()
        with contextlib.suppress(Exception):
            await self.registry.aclose()
        if self.store is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self.store.close(), 10)
        if self.push is not None:
            await self.push.stop()
        if self.nats is not None:
            with contextlib.suppress(Exception):
                await self.nats.close()
        if self.pool is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self.pool.close(), 10)
        await asyncio.to_thread(self._embedded.stop)
        self.readiness = Readiness()


@contextlib.asynccontextmanager
async def running(
    settings: Settings,
    *,
    relay: bool = False,
    worker: bool = False,
    projections: bool = False,
    create: bool = True,
) -> AsyncIterator[Runtime]:
    """A started runtime for CLI commands; stopped on exit. ``create=False``: never start an empty
    embedded database (for commands that read an existing log)."""
    runtime = Runtime(settings, create_embedded=create)
    try:
        await runtime.start(relay=relay, worker=worker, projections=projections)
        yield runtime
    finally:
        await runtime.stop()


@dataclass
class LogDatabase:
    """The log's database without NATS or background loops: what auditors and operators need."""

    pool: asyncpg.Pool
    store: EventStore
    workflows: WorkflowStore
    database_url: str
    """Where ``pool`` connects (the embedded server's URL when it is the embedded one)."""


@contextlib.asynccontextmanager
async def log_database(settings: Settings, *, create: bool) -> AsyncIterator[LogDatabase]:
    """Pool, migrations, event store and workflow store; stopped on exit. An audit must work
    while NATS is down, so nothing else starts. ``create=False``: never start an empty
    embedded database (the command reads an existing log)."""
    embedded = EmbeddedServers(settings.home, create=create)
    url = await asyncio.to_thread(embedded.postgres_url, settings.database_url)
    pool: asyncpg.Pool | None = None
    store: EventStore | None = None
    try:
        pool = await create_pool(url)
        async with pool.acquire() as conn:
            await apply_migrations(conn)
        store = EventStore(pool)
        await store.start()
        yield LogDatabase(pool, store, WorkflowStore(pool), url)
    finally:
        if store is not None:
            await store.close()
        if pool is not None:
            await pool.close()
        await asyncio.to_thread(embedded.stop)
