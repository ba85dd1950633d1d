"""``audit verify``, ``export``, ``verify-bundle`` and ``import`` against real PostgreSQL.

The core functions run on the per-test ``schema``; the CLI (which always uses schema
``flowledger``) runs via click's CliRunner against fresh databases of its own.
"""

from __future__ import annotations

import asyncio
import uuid
from pathlib import Path
from uuid import UUID

import asyncpg
import pytest
from click.testing import CliRunner, Result

from schemas.canonical import verify_chain
from schemas.envelope import RawEnvelope
from schemas.events import (
    NodeExecuteAfter,
    RunFinished,
    RunQueued,
    RunStarted,
)
from schemas.workflow import NodeSpec, WorkflowSpec
from service.bench.scratch import scratch_schema
from service.cli.main import cli
from service.history.audit import AuditProblem, audit_log, audit_runs
from service.history.bundle import (
    ExportRefused,
    ImportRefused,
    bundle_lines,
    collect_runs,
    import_bundle,
    verify_bundle_file,
    write_bundle,
)
from service.store.event_store import EventStore
from service.store.workflow_store import WorkflowStore
from tests.helpers.databases import scratch_database_sync
from tests.helpers.servers import Servers
from tests.helpers.stored_runs import (
    SPEC,
    TENANT,
    VERSION,
    append_run,
    orders_history,
    started_store,
    tamper_row,
    write_orders,
)


def _where(problems: list[AuditProblem]) -> list[tuple[UUID | None, int | None, str]]:
    return [(p.run_id, p.seq, p.kind) for p in problems]


async def _count(pool: asyncpg.Pool, schema: str) -> int:
    async with pool.acquire() as conn:
        return int(await conn.fetchval(f'SELECT count(*) FROM "{schema}".events'))


def _stored(events: list[RawEnvelope]) -> list[tuple[object, ...]]:
    """Everything of an event that must survive an import (not its global position)."""
    return [
        (
            *(e.event_id, e.run_id, e.seq, e.type, e.tenant, e.workflow_id, e.recorded_at),
            *(e.schema_version, e.prev_hash, e.hash, bytes(e.data)),
        )
        for e in events
    ]


# -- audit verify (core) ---------------------------------------------------------------------------


async def test_a_clean_log_audits_clean_and_counts_what_it_checked(store: EventStore) -> None:
    runs = [await append_run(store, orders_history()) for _ in range(3)]
    other = await append_run(store, orders_history(finished=False), workflow_id="invoices")
    async with store.pool.acquire() as conn:
        seen: list[tuple[int, int]] = []
        report = await audit_log(store, conn, page_size=5, on_progress=lambda *p: seen.append(p))
        assert report.problems == []
        assert (report.runs, report.events) == (4, 3 * 9 + 8)
        assert seen == sorted(seen) and seen[-1] == (await store.head_position(), 35)
        only = await audit_log(store, conn, workflow_id="invoices")
        assert (only.runs, only.events, only.problems) == (1, 8, [])
        assert (await audit_runs(store, conn, [*runs, other])).problems == []


async def test_a_row_changed_behind_the_trigger_is_reported_at_its_run_and_seq(
    store: EventStore, schema: str
) -> None:
    runs = [await append_run(store, orders_history()) for _ in range(3)]
    target = runs[1]
    async with store.pool.acquire() as conn:
        await tamper_row(conn, schema, target, 1)  # run_started's worker_id
        report = await audit_log(store, conn, page_size=7)
        assert _where(report.problems) == [(target, 1, "chain")], report.problems
        assert report.problems[0].problem == "hash does not match the event's contents"
        assert report.summary().startswith("FAILED: 1 problem in 1 run")
        single = await audit_runs(store, conn, [target, runs[0]])
        assert _where(single.problems) == [(target, 1, "chain")]
    # The audit agrees with the plain chain check.
    assert [(p.run_id, p.seq) for p in verify_chain(await store.read_run(target))] == [(target, 1)]


async def test_an_illegal_but_correctly_hashed_history_is_a_legality_problem(store: EventStore) -> None:
    good = await append_run(store, orders_history())
    bad = await append_run(
        store,
        [
            [RunQueued(workflow_version=VERSION), RunStarted()],
            # The store accepts it: it checks seq and bodies, not the state machine.
            [NodeExecuteAfter(node_id="fetch", node_type="noop", status="succeeded")],
            [RunFinished(status="succeeded"), RunFinished(status="failed")],
        ],
    )
    assert verify_chain(await store.read_run(bad)) == []
    async with store.pool.acquire() as conn:
        report = await audit_log(store, conn)
    assert _where(report.problems) == [(bad, 2, "legality"), (bad, 4, "legality")], report.problems
    assert "fetch finished but was not running" in report.problems[0].problem
    assert "after the run ended" in report.problems[1].problem
    assert good not in {p.run_id for p in report.problems}


async def test_run_queue_rows_are_checked_against_the_log(store: EventStore, schema: str) -> None:
    open_run = await append_run(store, orders_history(finished=False))
    ended_run = await append_run(store, orders_history())
    ghost = uuid.uuid4()
    async with store.pool.acquire() as conn:
        await conn.executemany(
            f'INSERT INTO "{schema}".run_queue (run_id, tenant, workflow_id, workflow_version, status) '
            "VALUES ($1, 'acme', 'orders', $2, $3)",
            [(open_run, VERSION, "ended"), (ended_run, VERSION, "ended"), (ghost, VERSION, "queued")],
        )
        report = await audit_log(store, conn)
        assert sorted(_where(report.problems), key=str) == sorted(
            [(open_run, 7, "queue"), (ghost, None, "queue")], key=str
        )
        single = await audit_runs(store, conn, [open_run])
        assert _where(single.problems) == [(open_run, 7, "queue")]
        missing = await audit_runs(store, conn, [ghost])
        assert [p.seq for p in missing.problems] == [None]


# -- export / verify-bundle / import (core) --------------------------------------------------------


async def test_export_verify_import_round_trips_and_reimport_writes_nothing(
    store: EventStore, pool: asyncpg.Pool, tmp_path: Path
) -> None:
    source_workflows = WorkflowStore(pool, schema=store.schema)
    registered, _ = await source_workflows.register(SPEC, tenant=TENANT)
    runs = [await append_run(store, orders_history()) for _ in range(2)]
    runs.append(await append_run(store, orders_history("unregistered"), workflow_id="adhoc"))
    exported = await collect_runs(store, source_workflows, runs)
    assert [r.run.spec for r in exported] == [SPEC, SPEC, None]
    path = tmp_path / "bundle.ndjson"
    write_bundle(path, bundle_lines(exported, store.clock()))
    check = verify_bundle_file(path)
    assert check.problems == [] and check.events == 27

    async with scratch_schema(pool, prefix="t_target") as target:
        workflows = WorkflowStore(pool, schema=target)
        newer = WorkflowSpec(id="orders", nodes=[NodeSpec(id="fetch", type="noop")])
        await workflows.register(newer, tenant=TENANT)  # the target's own, newer version
        result = await import_bundle(pool, check, schema=target)
        assert (result.new_runs, result.events_written, result.workflows_new) == (runs, 27, 1)
        # The imported version keeps its registration time: it does not become the latest.
        assert (await workflows.get("orders", VERSION, tenant=TENANT)).created_at == registered.created_at
        assert (await workflows.get("orders", tenant=TENANT)).spec == newer
        target_store = EventStore(pool, schema=target)
        for run_id in runs:
            assert _stored(await target_store.read_run(run_id)) == _stored(await store.read_run(run_id))
        assert (await workflows.get("orders", VERSION, tenant=TENANT)).spec == SPEC
        async with pool.acquire() as conn:
            assert (await audit_log(target_store, conn)).problems == []

        again = await import_bundle(pool, verify_bundle_file(path), schema=target)
        assert (again.events_written, again.present_runs, again.workflows_new) == (0, runs, 0)
        assert await _count(pool, target) == 27

        # A later export of a run the target holds a prefix of appends only the rest.
        longer = await append_run(store, orders_history(finished=False))
        short_bundle = tmp_path / "short.ndjson"
        write_bundle(
            short_bundle, bundle_lines(await collect_runs(store, source_workflows, [longer]), store.clock())
        )
        await import_bundle(pool, verify_bundle_file(short_bundle), schema=target)
        await store.append(longer, [RunFinished(status="failed")], 8, tenant="acme", workflow_id="orders")
        write_bundle(path, bundle_lines(await collect_runs(store, source_workflows, [longer]), store.clock()))
        extended = await import_bundle(pool, verify_bundle_file(path), schema=target)
        assert (extended.extended_runs, extended.events_written) == ([longer], 1)
        assert _stored(await target_store.read_run(longer)) == _stored(await store.read_run(longer))


async def test_a_tampered_or_conflicting_bundle_is_refused_and_writes_nothing(
    store: EventStore, pool: asyncpg.Pool, tmp_path: Path
) -> None:
    workflows = WorkflowStore(pool, schema=store.schema)
    runs = [await append_run(store, orders_history()) for _ in range(2)]
    path = tmp_path / "bundle.ndjson"
    write_bundle(path, bundle_lines(await collect_runs(store, workflows, runs), store.clock()))
    data = path.read_bytes()
    tampered = tmp_path / "tampered.ndjson"
    tampered.write_bytes(data.replace(b'"worker_id":"w1"', b'"worker_id":"w2"', 1))
    check = verify_bundle_file(tampered)
    assert (runs[0], 1, "chain") in _where(check.problems)

    async with scratch_schema(pool, prefix="t_target") as target:
        with pytest.raises(ImportRefused):
            await import_bundle(pool, check, schema=target)
        assert await _count(pool, target) == 0

        # The target already holds another history under the second run's id.
        async with started_store(pool, target) as other_store:
            await append_run(other_store, orders_history(), run_id=runs[1])
        with pytest.raises(ImportRefused) as refused:
            await import_bundle(pool, verify_bundle_file(path), schema=target)
        assert _where(refused.value.problems) == [(runs[1], 0, "chain")]
        assert await _count(pool, target) == 9  # only the other history: nothing of the bundle


async def test_export_refuses_runs_that_do_not_verify(
    store: EventStore, pool: asyncpg.Pool, schema: str
) -> None:
    run_id = await append_run(store, orders_history())
    async with pool.acquire() as conn:
        await tamper_row(conn, schema, run_id, 1)
    missing = uuid.uuid4()
    with pytest.raises(ExportRefused) as refused:
        await collect_runs(store, WorkflowStore(pool, schema=schema), [run_id, missing])
    assert sorted(_where(refused.value.problems), key=str) == sorted(
        [(run_id, 1, "chain"), (missing, None, "chain")], key=str
    )


# -- the CLI -----------------------------------------------------------------------------------------


def test_the_cli_audits_exports_verifies_and_imports(servers: Servers, tmp_path: Path) -> None:
    runner = CliRunner()

    def invoke(url: str, *args: str) -> Result:
        return runner.invoke(cli, ["--database-url", url, "--log-level", "warning", *args])

    bundle = tmp_path / "bundle.ndjson"
    with (
        scratch_database_sync(servers.database_url, "audit") as source,
        scratch_database_sync(servers.database_url, "audit") as target,
    ):
        runs = asyncio.run(write_orders(source, runs=3))

        clean = invoke(source, "audit", "verify", "--all")
        assert clean.exit_code == 0, clean.output
        assert clean.stdout.strip() == "ok: 27 events in 3 runs verified, no problems"
        assert invoke(source, "audit", "verify", str(runs[0])).exit_code == 0
        assert invoke(source, "audit", "verify").exit_code == 2  # nothing named: a usage error

        exported = invoke(source, "export", str(runs[0]), str(runs[1]), "-o", str(bundle))
        assert exported.exit_code == 0, exported.output
        digest = exported.stdout.strip().rsplit("sha256:", 1)[1]
        verified = invoke(source, "verify-bundle", str(bundle), "--expect-digest", digest)
        assert verified.exit_code == 0, verified.output
        assert "ok: 18 events in 2 runs verified" in verified.stdout

        imported = invoke(target, "import", str(bundle))
        assert imported.exit_code == 0, imported.output
        assert imported.stdout.startswith("imported 18 events: 2 new runs"), imported.stdout
        again = invoke(target, "import", str(bundle))
        assert again.exit_code == 0, again.output
        assert again.stdout.startswith("imported 0 events: 0 new runs, 0 extended, 2 already present")
        target_audit = invoke(target, "audit", "verify", "--all")
        assert target_audit.exit_code == 0, target_audit.output
        assert "18 events in 2 runs" in target_audit.stdout

        tampered = tmp_path / "tampered.ndjson"
        lines = bundle.read_bytes().splitlines(keepends=True)
        tampered.write_bytes(b"".join([*lines[:3], *lines[4:]]))  # run 0's seq 1 removed
        bad = invoke(target, "verify-bundle", str(tampered))
        assert bad.exit_code == 1
        assert f"run {runs[0]} seq 2: chain: seq 2 where 1 was expected" in bad.stdout
        refused = invoke(target, "import", str(tampered))
        assert refused.exit_code == 1
        assert "nothing was imported" in refused.stdout
        assert sorted(asyncio.run(write_orders(target)), key=str) == sorted(runs[:2], key=str)

        asyncio.run(write_orders(source, tamper=(runs[2], 1)))
        for args in (["--all"], [str(runs[2])], ["--workflow", "orders"]):
            found = invoke(source, "audit", "verify", *args)
            assert found.exit_code == 1, found.output
            assert found.stdout.splitlines() == [
                f"run {runs[2]} seq 1: chain: hash does not match the event's contents",
                "FAILED: 1 problem in 1 run "
                + (
                    "(9 events in 1 run checked)"
                    if args == [str(runs[2])]
                    else "(27 events in 3 runs checked)"
                ),
            ]
        refused_export = invoke(source, "export", str(runs[2]), "-o", str(tmp_path / "no.ndjson"))
        assert refused_export.exit_code == 1
        assert not (tmp_path / "no.ndjson").exists()
