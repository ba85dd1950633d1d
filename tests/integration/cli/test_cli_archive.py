"""``flowledger archive`` as an operator runs it, on a database of its own with small partitions:
ended runs go to a verified bundle, the partitions holding only their events are detached and
dropped, ``audit verify`` reports them as archived, and ``import`` brings every event back."""

from __future__ import annotations

import asyncio
import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from uuid import UUID

import asyncpg
from click.testing import CliRunner, Result

from schemas.envelope import RawEnvelope
from service.cli.main import cli
from service.infra.db import create_pool
from service.infra.migrations import apply_migrations
from service.store.event_store import EventStore
from service.store.workflow_store import WorkflowStore
from tests.helpers.databases import scratch_database_sync
from tests.helpers.servers import Servers
from tests.helpers.stored_runs import SPEC, TENANT, append_run, orders_history, started_store

PARTITION_SIZE = 20
"""Positions per partition: a run of ``orders`` has 9 events, so runs share and span partitions."""


def _invoke(url: str, *args: str) -> Result:
    return CliRunner().invoke(cli, ["--database-url", url, "--log-level", "warning", *args])


async def _write_runs(url: str, ended: int, after: int = 0) -> tuple[list[UUID], UUID]:
    """``ended`` finished runs of ``orders``, one still running, then ``after`` more finished ones."""
    pool = await create_pool(url, min_size=1, max_size=4)
    try:
        async with pool.acquire() as conn:
            await apply_migrations(conn)
            await conn.execute("UPDATE flowledger.event_partitioning SET partition_size = $1", PARTITION_SIZE)
        await WorkflowStore(pool).register(SPEC, tenant=TENANT)
        async with started_store(pool, "flowledger") as store:
            done = [await append_run(store, orders_history()) for _ in range(ended)]
            running = await append_run(store, orders_history(finished=False))
            done += [await append_run(store, orders_history()) for _ in range(after)]
        return done, running
    finally:
        await pool.close()


async def _read(url: str, sql: str, *args: object) -> list[asyncpg.Record]:
    conn = await asyncpg.connect(url)
    try:
        return await conn.fetch(sql, *args)
    finally:
        await conn.close()


async def _events(url: str, run_ids: list[UUID]) -> dict[UUID, list[RawEnvelope]]:
    pool = await create_pool(url, min_size=1, max_size=2)
    try:
        store = EventStore(pool)
        return {run_id: await store.read_run(run_id, archived_ok=True) for run_id in run_ids}
    finally:
        await pool.close()


def _tomorrow() -> str:
    return (datetime.now(UTC) + timedelta(days=1)).date().isoformat()


def test_archive_detaches_what_only_ended_runs_hold_and_import_restores_it(
    servers: Servers, tmp_path: Path
) -> None:
    with scratch_database_sync(servers.database_url, "archive") as url:
        ended, running = asyncio.run(_write_runs(url, ended=6, after=6))
        everything = [*ended, running]
        before = asyncio.run(_events(url, everything))

        result = _invoke(url, "archive", "--before", _tomorrow(), "-o", str(tmp_path))
        assert result.exit_code == 0, result.output

        # The bundle: one file, verifies offline, its digest is the recorded one.
        (bundle,) = tmp_path.glob("flowledger-archive-*.ndjson")
        checked = _invoke(url, "verify-bundle", str(bundle))
        assert checked.exit_code == 0, checked.output
        (archive,) = asyncio.run(_read(url, "SELECT * FROM flowledger.archives"))
        assert archive["run_count"] == 12
        assert archive["event_count"] == 12 * 9
        assert archive["bundle_file"] == bundle.name
        assert f"digest sha256:{archive['bundle_sha256']}" in result.stdout
        assert archive["bundle_sha256"] in checked.stdout
        heads = json.loads(archive["heads"])
        assert set(heads) == {str(r) for r in ended}  # only the ended runs
        for run_id in ended:
            assert heads[str(run_id)]["head_hash"] == before[run_id][-1].hash
            assert heads[str(run_id)]["events"] == len(before[run_id])

        # The partitions: those holding only archived runs are gone; those holding the running
        # run's events stay, and say why; so does the one still appended to.
        detached = list(archive["partitions_detached"])
        assert detached, result.output
        for name in detached:
            assert f"detached and dropped partition {name} " in result.stdout
            assert asyncio.run(_read(url, "SELECT to_regclass($1)", f"flowledger.{name}"))[0][0] is None
        assert f"e.g. run {running}" in result.stdout, result.stdout  # kept: holds a run not archived
        after = asyncio.run(_events(url, everything))
        assert after[running] == before[running]
        assert "new events are still appended there" in result.stdout
        gone = [r for r in ended if not after[r]]
        partly = [r for r in ended if after[r] and after[r] != before[r]]
        whole = [r for r in ended if after[r] == before[r]]
        assert gone and partly and whole, result.stdout
        for run_id in partly:  # the partition of its first events went; its last ones stay
            assert after[run_id] == before[run_id][-len(after[run_id]) :]
        positions = [e.global_position for r in gone for e in before[r]]
        recorded = asyncio.run(
            _read(
                url,
                "SELECT lower_position, upper_position FROM flowledger.event_partitions WHERE name = ANY($1)",
                detached,
            )
        )
        assert all(any(lo <= p < hi for lo, hi in recorded) for p in positions)

        # The audit: archived runs are archived, not missing; with the directory, the bundle too.
        audit = _invoke(url, "audit", "verify", "--all")
        assert audit.exit_code == 0, audit.output
        archived = f"{len(gone) + len(partly)} archived runs out of the log ({len(partly)} of them partly)"
        assert archived in audit.stdout
        with_bundle = _invoke(url, "audit", "verify", "--all", "--archive-dir", str(tmp_path))
        assert with_bundle.exit_code == 0, with_bundle.output
        assert "1 archive bundle checked" in with_bundle.stdout
        for run_id in (gone[0], partly[0], whole[0], running):
            one = _invoke(url, "audit", "verify", str(run_id), "--archive-dir", str(tmp_path))
            assert one.exit_code == 0, one.output
            assert ("1 archived run" in one.stdout) == (run_id in (gone[0], partly[0])), one.stdout

        # A second archive finds nothing new.
        again = _invoke(url, "archive", "--before", _tomorrow(), "-o", str(tmp_path))
        assert again.exit_code == 0, again.output
        assert again.stdout.startswith("nothing to archive")

        # Import brings every event back, exactly, at its own position.
        imported = _invoke(url, "import", str(bundle))
        assert imported.exit_code == 0, imported.output
        assert f"archive {archive['id']} restored" in imported.stdout
        assert asyncio.run(_events(url, everything)) == before
        audit = _invoke(url, "audit", "verify", "--all")
        assert audit.exit_code == 0, audit.output
        assert "archived run" not in audit.stdout
        assert "13 runs verified" in audit.stdout


def test_a_changed_archive_bundle_fails_the_audit_with_the_directory(
    servers: Servers, tmp_path: Path
) -> None:
    with scratch_database_sync(servers.database_url, "archive") as url:
        asyncio.run(_write_runs(url, ended=4))
        assert _invoke(url, "archive", "--before", _tomorrow(), "-o", str(tmp_path)).exit_code == 0
        (bundle,) = tmp_path.glob("*.ndjson")
        content = bundle.read_bytes()
        assert b'"order":7' in content
        bundle.write_bytes(content.replace(b'"order":7', b'"order":8', 1))
        audit = _invoke(url, "audit", "verify", "--all", "--archive-dir", str(tmp_path))
        assert audit.exit_code == 1, audit.output
        assert f"archive 1 ({bundle.name})" in audit.stdout
        bundle.unlink()
        missing = _invoke(url, "audit", "verify", "--all", "--archive-dir", str(tmp_path))
        assert missing.exit_code == 1
        assert "the bundle is not in" in missing.stdout


def test_archive_refuses_bad_input_in_one_line(servers: Servers, tmp_path: Path) -> None:
    url = servers.database_url
    bad_date = _invoke(url, "archive", "--before", "2026-13-01", "-o", str(tmp_path))
    assert bad_date.exit_code == 2
    assert "'2026-13-01' is not a date" in bad_date.stderr
    future = (datetime.now(UTC) + timedelta(days=30)).date().isoformat()
    later = _invoke(url, "archive", "--before", future, "-o", str(tmp_path))
    assert later.exit_code == 2
    assert "is in the future" in later.stderr
    a_file = tmp_path / "file"
    a_file.write_text("")
    for target in (a_file, tmp_path / "missing"):
        result = _invoke(url, "archive", "--before", _tomorrow(), "-o", str(target))
        assert result.exit_code == 1, result.output
        assert result.stderr.strip() == f"Error: cannot write to {target}: it is not an existing directory"
    for result in (bad_date, later):  # click's usage error: the error itself is one line
        assert isinstance(result.exception, SystemExit)
        assert [line for line in result.stderr.splitlines() if line.startswith("Error:")] == [
            result.stderr.splitlines()[-1]
        ]
    assert not list(tmp_path.glob("*.ndjson"))


def test_partitions_wait_for_the_readers_of_the_log_and_a_later_archive_detaches_them(
    servers: Servers, tmp_path: Path
) -> None:
    with scratch_database_sync(servers.database_url, "archive") as url:
        ended, _running = asyncio.run(_write_runs(url, ended=4))
        asyncio.run(_read(url, "INSERT INTO flowledger.checkpoints (name, position) VALUES ('relay', 5)"))

        first = _invoke(url, "archive", "--before", _tomorrow(), "-o", str(tmp_path))
        assert first.exit_code == 0, first.output
        assert "archive 1: 4 runs" in first.stdout
        assert "detached and dropped" not in first.stdout
        assert "reader relay has read the log up to position 5 only" in first.stdout
        assert "no partition could be detached" in first.stdout
        assert all(asyncio.run(_events(url, ended)).values())  # every archived run still readable

        asyncio.run(_read(url, "UPDATE flowledger.checkpoints SET position = 1000 WHERE name = 'relay'"))
        second = _invoke(url, "archive", "--before", _tomorrow(), "-o", str(tmp_path))
        assert second.exit_code == 0, second.output
        assert second.stdout.startswith("nothing to archive")
        assert "detached and dropped partition events_0000000000000000001 " in second.stdout
        (archive,) = asyncio.run(_read(url, "SELECT partitions_detached FROM flowledger.archives"))
        assert "events_0000000000000000001" in archive[0]
        assert len(list(tmp_path.glob("*.ndjson"))) == 1


def test_a_changed_event_of_a_partly_archived_run_fails_the_audit(servers: Servers, tmp_path: Path) -> None:
    with scratch_database_sync(servers.database_url, "archive") as url:
        ended, _running = asyncio.run(_write_runs(url, ended=6, after=6))
        assert _invoke(url, "archive", "--before", _tomorrow(), "-o", str(tmp_path)).exit_code == 0
        before = asyncio.run(_events(url, ended))
        partly = next(r for r, events in before.items() if events and events[0].seq > 0)
        last = before[partly][-1]
        asyncio.run(
            _read(
                url,
                "DO $$ BEGIN "
                "ALTER TABLE flowledger.events DISABLE TRIGGER USER; "
                f"UPDATE flowledger.events SET data = replace(data::text, '3.5', '4.5')::json "
                f"WHERE run_id = '{partly}' AND seq = {last.seq}; "
                "ALTER TABLE flowledger.events ENABLE TRIGGER USER; END $$",
            )
        )
        audit = _invoke(url, "audit", "verify", "--all")
        assert audit.exit_code == 1, audit.output
        assert f"run {partly} seq {last.seq}: chain: hash does not match the event's contents" in audit.stdout
