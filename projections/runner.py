"""Checkpointed projection runners: fold log events into view rows, batch by batch.

Guarantees:
- the view rows and the projector's checkpoint are written in one transaction,
  so a runner stopped at any point resumes exactly where it committed;
- one runner per projector advances at a time (the checkpoint row is locked);
- a rebuild folds the whole log into a shadow table while the live view keeps
  serving, then swaps the tables atomically (with the last events applied
  under the same lock), so readers never see a half-built view.

The runner owns only the SQL of the view tables; reading the log and the
checkpoints is handed in (``LogAccess``), so this package imports nothing of
the service.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass
from types import ModuleType
from typing import Any, Protocol
from uuid import UUID

import asyncpg
import msgspec

from projections import node_executions, run_summaries
from projections.shadow_tables import add_indexes, create_unindexed, swap_in
from schemas.envelope import EventEnvelope, FoldEvent, LogEvent
from schemas.names import DB_SCHEMA


class Conn(Protocol):
    """The subset of an asyncpg connection the runner uses."""

    async def execute(self, query: str, *args: Any) -> str: ...
    async def executemany(self, command: str, args: Any) -> None: ...
    async def fetch(self, query: str, *args: Any) -> list[Any]: ...
    async def fetchval(self, query: str, *args: Any) -> Any: ...
    def transaction(self) -> Any: ...
    async def copy_records_to_table(
        self, table_name: str, *, records: Any, columns: Any, schema_name: str
    ) -> str: ...


@dataclass(frozen=True)
class LogPage:
    """A page of the log: how far it reached, how many events it held, the decoded ones wanted."""

    last_position: int
    count: int
    events: list[LogEvent]


class LogAccess(Protocol):
    """Reading the event log and the checkpoints (implemented by the service)."""

    async def read_events(self, conn: Any, after_position: int, limit: int) -> list[EventEnvelope]: ...
    async def read_page(self, after_position: int, limit: int, types: frozenset[str]) -> LogPage:
        """The next ``limit`` events on a connection of its own; only those of ``types`` are
        decoded and returned (a full rebuild reads the whole log this way)."""
        ...

    async def lock_checkpoint(self, conn: Any, name: str) -> int: ...
    async def write_checkpoint(self, conn: Any, name: str, position: int) -> None: ...


@dataclass(frozen=True)
class Projection:
    """One read model: its pure fold and how its rows map to a table."""

    name: str
    table: str
    row_type: type[msgspec.Struct]
    key_columns: tuple[str, ...]
    key: Callable[[FoldEvent], Hashable | None]
    apply: Callable[[Any, FoldEvent], Any]
    types: frozenset[str]
    """Event types the view reads: others are not even decoded for it."""

    @classmethod
    def of(
        cls, module: ModuleType, row_type: type[msgspec.Struct], key_columns: tuple[str, ...]
    ) -> Projection:
        return cls(
            module.NAME, module.TABLES[0], row_type, key_columns, module.key, module.apply, module.TYPES
        )

    @property
    def columns(self) -> tuple[str, ...]:
        return tuple(self.row_type.__struct_fields__)


PROJECTIONS: dict[str, Projection] = {
    p.name: p
    for p in (
        Projection.of(run_summaries, run_summaries.RunSummary, ("run_id",)),
        Projection.of(node_executions, node_executions.NodeExecution, ("run_id", "node_id")),
    )
}


_TERMINAL = frozenset({"run_finished", "run_cancelled"})


def _key_tuple(key: Hashable) -> tuple[Any, ...]:
    return key if isinstance(key, tuple) else (key,)


def fold_batch(
    projection: Projection, rows: dict[Hashable, Any], events: Sequence[FoldEvent]
) -> set[Hashable]:
    """Apply ``events`` to ``rows`` in place (pure apart from the dict); returns the keys changed."""
    changed: set[Hashable] = set()
    for event in events:
        if event.type not in projection.types:
            continue
        key = projection.key(event)
        if key is None:
            continue
        before = rows.get(key)
        after = projection.apply(before, event)
        if after is not None and after is not before:
            rows[key] = after
            changed.add(key)
    return changed


class ProjectionRunner:
    """Advances one projection's view table (``table`` overrides it, e.g. for a shadow)."""

    def __init__(self, projection: Projection, *, schema: str = DB_SCHEMA, table: str | None = None) -> None:
        self.projection = projection
        self.schema = schema
        self.table = table or projection.table
        t = f'"{schema}"."{self.table}"'
        cols = projection.columns
        keys = projection.key_columns
        values_sql = ", ".join(f"${i + 1}" for i in range(len(cols)))
        updates = ", ".join(f"{c} = EXCLUDED.{c}" for c in cols if c not in keys)
        self._sql_upsert = (
            f"INSERT INTO {t} ({', '.join(cols)}) VALUES ({values_sql}) "
            f"ON CONFLICT ({', '.join(keys)}) DO UPDATE SET {updates}"
        )
        if keys == ("run_id",):
            self._sql_load = f"SELECT * FROM {t} WHERE run_id = ANY($1::uuid[])"
        else:
            self._sql_load = (
                f"SELECT t.* FROM {t} t JOIN unnest($1::uuid[], $2::text[]) AS k(run_id, node_id) "
                "USING (run_id, node_id)"
            )

    async def load(self, conn: Conn, keys: set[Hashable]) -> dict[Hashable, Any]:
        if not keys:
            return {}
        columns = list(zip(*(_key_tuple(k) for k in keys), strict=True))
        args = [[UUID(v) for v in columns[0]], *[list(c) for c in columns[1:]]]
        rows = await conn.fetch(self._sql_load, *args)
        out: dict[Hashable, Any] = {}
        for row in rows:
            data = dict(row)
            data["run_id"] = str(data["run_id"])
            view = msgspec.convert(data, self.projection.row_type)
            key = tuple(data[c] for c in self.projection.key_columns)
            out[key[0] if len(key) == 1 else key] = view
        return out

    async def save(self, conn: Conn, rows: list[Any]) -> None:
        if not rows:
            return
        await conn.executemany(self._sql_upsert, [_storable_record(row) for row in rows])

    async def apply_events(self, conn: Conn, events: Sequence[FoldEvent]) -> None:
        """Fold ``events`` into the table (inside the caller's transaction)."""
        keys = {k for e in events if (k := self.projection.key(e)) is not None}
        rows = await self.load(conn, keys)
        changed = fold_batch(self.projection, rows, events)
        await self.save(conn, [rows[k] for k in changed])

    async def step(self, conn: Conn, log: LogAccess, limit: int = 2000, checkpoint: str | None = None) -> int:
        """One batch: lock the checkpoint, fold the next events, write rows + checkpoint. Returns events applied."""
        name = checkpoint or self.projection.name
        async with conn.transaction():
            position = await log.lock_checkpoint(conn, name)
            events = await log.read_events(conn, position, limit)
            if not events:
                return 0
            await self.apply_events(conn, events)
            await log.write_checkpoint(conn, name, events[-1].global_position)
        return len(events)


def _record(row: Any) -> tuple[Any, ...]:
    """A view row as database values, in ``projection.columns`` order (asyncpg encodes the
    run id string as uuid and tuples as arrays)."""
    return msgspec.structs.astuple(row)


def _storable(value: Any) -> Any:
    # PostgreSQL text cannot hold NUL, which an event may (a node's error message, a cancel
    # reason): the view shows U+FFFD there, while the log keeps the exact text.
    if isinstance(value, str):
        return value.replace("\x00", "\ufffd")
    if isinstance(value, tuple):
        return tuple(_storable(v) for v in value)
    return value


def _storable_record(row: Any) -> tuple[Any, ...]:
    """``_record`` with any NUL character in text replaced (checked per value: slower)."""
    return tuple(_storable(v) for v in msgspec.structs.astuple(row))


class _ShadowWriter:
    """Buffers finished rows and COPYs them into the shadow tables in large batches, one COPY
    at a time in the background, so that folding goes on while the database loads rows."""

    def __init__(
        self,
        conn: Conn,
        schema: str,
        projections: list[Projection],
        shadows: list[str],
        batch_rows: int = 20_000,
    ) -> None:
        self.conn = conn
        self.schema = schema
        self.targets = [(shadow, list(p.columns)) for p, shadow in zip(projections, shadows, strict=True)]
        self.batch_rows = batch_rows
        self.records: list[list[tuple[Any, ...]]] = [[] for _ in projections]
        self.buffered = 0
        self.copying: asyncio.Future[None] | None = None

    def add(self, index: int, row: Any) -> None:
        self.records[index].append(_record(row))
        self.buffered += 1

    async def flush_when_full(self) -> None:
        if self.buffered >= self.batch_rows:
            await self._flush()

    async def close(self) -> None:
        await self._flush()
        await self._wait()

    def abort(self) -> None:
        if self.copying is not None:
            self.copying.cancel()

    async def _flush(self) -> None:
        await self._wait()
        records, self.records, self.buffered = self.records, [[] for _ in self.targets], 0
        self.copying = asyncio.ensure_future(self._copy(records))

    async def _wait(self) -> None:
        if self.copying is not None:
            copying, self.copying = self.copying, None
            await copying

    async def _copy(self, records: list[list[tuple[Any, ...]]]) -> None:
        for (shadow, columns), recs in zip(self.targets, records, strict=True):
            if not recs:
                continue
            try:
                await self.conn.copy_records_to_table(
                    shadow, records=recs, columns=columns, schema_name=self.schema
                )
            except asyncpg.CharacterNotInRepertoireError:
                # A NUL in some text: nothing of this COPY was written; again, made storable.
                await self.conn.copy_records_to_table(
                    shadow,
                    records=[tuple(_storable(v) for v in r) for r in recs],
                    columns=columns,
                    schema_name=self.schema,
                )


async def rebuild(
    conn: Conn,
    log: LogAccess,
    projection: Projection,
    *,
    schema: str = DB_SCHEMA,
    batch: int = 5000,
    on_progress: Callable[[int], None] | None = None,
) -> int:
    """Rebuild one projection (see ``rebuild_all``). Returns the final position."""
    return await rebuild_all(conn, log, [projection], schema=schema, batch=batch, on_progress=on_progress)


async def rebuild_all(
    conn: Conn,
    log: LogAccess,
    projections: list[Projection],
    *,
    schema: str = DB_SCHEMA,
    batch: int = 5000,
    on_progress: Callable[[int], None] | None = None,
    copy_rows: int = 20_000,
    fold: FoldShadows | None = None,
) -> int:
    """Fold the whole log into shadow tables in one pass, then swap them in atomically.

    The shadow tables are filled without indexes, which are built once at the end
    (``shadow_tables``). The fold runs in memory: a run's rows are written (with COPY) once its
    terminal event has been applied, so each row is written once instead of
    once per batch; runs still open at the end are written then. The live views
    keep serving (and their runners keep advancing) until the swap, which takes
    the live checkpoint locks, applies what arrived meanwhile, and renames the
    tables in the same transaction. Returns the final position.

    ``fold`` fills the (unindexed) shadow tables some other way, e.g. in several processes
    each folding a share of the runs (``FoldShadows``); by default ``fold_into_shadows``
    does it here, COPYing on ``conn``.
    """
    shadows = [f"{p.table}_rebuild" for p in projections]
    indexes = [
        await create_unindexed(conn, schema, projection.table, shadow)
        for projection, shadow in zip(projections, shadows, strict=True)
    ]
    if fold is None:
        position, late = await fold_into_shadows(
            conn,
            log,
            projections,
            shadows,
            schema=schema,
            batch=batch,
            on_progress=on_progress,
            copy_rows=copy_rows,
        )
    else:
        position, late = await fold(projections, shadows, batch, on_progress)
    for shadow, shadow_indexes in zip(shadows, indexes, strict=True):
        await add_indexes(conn, schema, shadow, shadow_indexes)
    return await _catch_up_and_swap(
        conn, log, projections, shadows, position, late, schema=schema, batch=batch, on_progress=on_progress
    )


class FoldShadows(Protocol):
    """Fills the shadow tables of ``projections`` with their folded rows, reporting progress in
    log events; returns the position it read the log up to and the late events (events of
    runs already written, which ``rebuild_all`` applies before the swap), in log order."""

    async def __call__(
        self,
        projections: list[Projection],
        shadows: list[str],
        batch: int,
        on_progress: Callable[[int], None] | None,
    ) -> tuple[int, list[LogEvent]]: ...


async def fold_into_shadows(
    conn: Conn,
    log: LogAccess,
    projections: list[Projection],
    shadows: list[str],
    *,
    schema: str = DB_SCHEMA,
    batch: int = 5000,
    on_progress: Callable[[int], None] | None = None,
    copy_rows: int = 20_000,
) -> tuple[int, list[LogEvent]]:
    """Fold every page ``log`` gives into ``shadows`` (COPYed on ``conn``, which must not be
    the one ``log`` reads on); returns the last position read and the late events."""
    writer = _ShadowWriter(conn, schema, projections, shadows, copy_rows)
    return await _fold_log(log, _RebuildFold(projections, writer), batch, on_progress)


class _RebuildFold:
    """The in-memory fold of a rebuild: each view's rows of the runs not yet written.

    A run's rows go to the writer once its terminal event has been applied; an event of
    a run already written (only in an illegal history) is kept in ``late`` instead.
    """

    def __init__(self, projections: list[Projection], writer: _ShadowWriter) -> None:
        self.writer = writer
        self.rows: list[dict[Hashable, Any]] = [{} for _ in projections]
        self.keys_by_run: dict[str, list[tuple[int, Hashable]]] = {}
        self.written: set[str] = set()
        self.late: list[LogEvent] = []
        # Terminal events are always read: they tell when a run's rows can be written.
        self.wanted = frozenset().union(*(p.types for p in projections), _TERMINAL)
        # Per event type, the views that read it: (index, key function, apply function, rows).
        self.readers = {
            type_: [(i, p.key, p.apply, self.rows[i]) for i, p in enumerate(projections) if type_ in p.types]
            for type_ in self.wanted
        }

    def fold(self, events: list[LogEvent]) -> None:
        """Apply a page of events, then hand the rows of the runs it ended to the writer."""
        keys_by_run, written, late, readers = self.keys_by_run, self.written, self.late, self.readers
        ended: list[str] = []
        for event in events:
            run_id = event.run_id  # the text form already (``LogEvent``)
            type_ = event.type
            if type_ in _TERMINAL:
                ended.append(run_id)
            if run_id in written:
                late.append(event)
                continue
            for index, key_of, apply, table in readers[type_]:
                key = key_of(event)
                if key is None:
                    continue
                before = table.get(key)
                after = apply(before, event)
                if after is not None:
                    if before is None:
                        keys_by_run.setdefault(run_id, []).append((index, key))
                    table[key] = after
        self.write(ended)

    def write(self, run_ids: list[str]) -> None:
        """Hand the rows of ``run_ids`` to the writer; later events of these runs are late."""
        for run_id in run_ids:
            for index, key in self.keys_by_run.pop(run_id, ()):
                row = self.rows[index].pop(key, None)
                if row is not None:
                    self.writer.add(index, row)
            self.written.add(run_id)

    def write_open_runs(self) -> None:
        """Hand the rows of the runs the log left open to the writer."""
        self.write(list(self.keys_by_run))


async def _fold_log(
    log: LogAccess, fold: _RebuildFold, batch: int, on_progress: Callable[[int], None] | None
) -> tuple[int, list[LogEvent]]:
    """Fold the whole log, page by page, into the shadow tables; returns the last position read
    and the late events (see ``_RebuildFold``)."""
    writer = fold.writer
    position = 0
    # The next page is read (on a connection of its own) while this one is folded.
    next_page = asyncio.ensure_future(log.read_page(0, batch, fold.wanted))
    try:
        while True:
            page = await next_page
            if not page.count:
                break
            next_page = asyncio.ensure_future(log.read_page(page.last_position, batch, fold.wanted))
            fold.fold(page.events)
            await writer.flush_when_full()
            position = page.last_position
            if on_progress is not None:
                on_progress(page.count)
        fold.write_open_runs()
        await writer.close()
    except BaseException:
        next_page.cancel()
        writer.abort()
        raise
    return position, fold.late


async def _catch_up_and_swap(
    conn: Conn,
    log: LogAccess,
    projections: list[Projection],
    shadows: list[str],
    position: int,
    late: list[LogEvent],
    *,
    schema: str,
    batch: int,
    on_progress: Callable[[int], None] | None,
) -> int:
    """Under the live checkpoint locks, apply the late events and what the log gained since
    ``position`` to the shadow tables, then swap them in and set the checkpoints, in one
    transaction. Returns the final position."""
    runners = [ProjectionRunner(p, schema=schema, table=t) for p, t in zip(projections, shadows, strict=True)]
    async with conn.transaction():
        for projection in projections:
            await log.lock_checkpoint(conn, projection.name)
        pending: Sequence[FoldEvent] = late
        while True:
            if pending:
                for runner in runners:
                    await runner.apply_events(conn, pending)
                position = max(position, pending[-1].global_position)
                if on_progress is not None:
                    on_progress(len(pending))
            pending = await log.read_events(conn, position, batch)
            if not pending:
                break
        for projection, shadow in zip(projections, shadows, strict=True):
            await swap_in(conn, schema, projection.table, shadow)
            await log.write_checkpoint(conn, projection.name, position)
    return position
