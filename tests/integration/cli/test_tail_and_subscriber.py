"""``flowledger tail`` and ``examples/subscriber.py`` against a real relay, NATS stream and Postgres."""

from __future__ import annotations

import asyncio
import contextlib
import io
import os
import signal
import sqlite3
import sys
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from nats.aio.client import Client as NATS

from schemas.codec import envelope_decoder
from schemas.envelope import RawEnvelope
from schemas.events import RunFinished, RunQueued, RunStarted
from service.cli.tail import TailOptionError, format_line, subject_filters, tail
from service.followers.relay import Relay
from service.store.event_store import EventStore
from tests.helpers.paths import FLOWLEDGER, REPO_ROOT
from tests.helpers.relay import wait_relayed, write_runs
from tests.helpers.servers import StreamTarget

SUBSCRIBER = REPO_ROOT / "examples" / "subscriber.py"


@pytest.fixture
async def relay(store: EventStore, nats_client: NATS, stream: StreamTarget) -> AsyncIterator[Relay]:
    r = Relay(store, nats_client, stream=stream.name, subject_prefix=stream.subject_prefix, idle_poll_s=0.1)
    task = asyncio.create_task(r.run())
    yield r
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task


async def test_tail_from_start_prints_one_runs_events_in_seq_order(
    store: EventStore, nats_client: NATS, stream: StreamTarget, relay: Relay
) -> None:
    events = await write_runs(store, runs=4, events_per_run=6)
    await wait_relayed([relay], store)
    run_id = events[7].run_id
    mine = sorted((e for e in events if e.run_id == run_id), key=lambda e: e.seq)
    assert len(mine) == 6

    async def tail_run(fmt: str) -> list[str]:
        out = io.StringIO()
        count = await tail(
            nats_client,
            tenant="acme",
            run=str(run_id).upper(),  # normalised to the published form
            fmt=fmt,  # type: ignore[arg-type]
            from_start=True,
            stream=stream.name,
            subject_prefix=stream.subject_prefix,
            out=out,
            idle_exit_s=1.0,  # everything is already in the stream
        )
        lines = out.getvalue().splitlines()
        assert count == len(lines)
        return lines

    lines = await tail_run("line")
    assert len(lines) == len(mine), lines
    short = str(run_id).replace("-", "")[-8:]
    for line, event in zip(lines, mine, strict=True):
        assert f" {short} #{event.seq} {event.type}" in line, line
    assert "n1 (noop) attempt 1" in lines[1]

    ndjson = await tail_run("ndjson")
    decoded = [envelope_decoder.decode(line) for line in ndjson]
    assert [(e.run_id, e.seq, e.event_id, e.hash) for e in decoded] == [
        (e.run_id, e.seq, e.event_id, e.hash) for e in mine
    ]


async def test_tail_live_sees_only_new_events_of_the_filter(
    store: EventStore, nats_client: NATS, stream: StreamTarget, relay: Relay
) -> None:
    await write_runs(store, runs=2, events_per_run=3)  # before tail starts: not shown
    await wait_relayed([relay], store)
    out = io.StringIO()
    stop = asyncio.Event()
    task = asyncio.create_task(
        tail(
            nats_client,
            tenant="acme",
            workflow="wf-1",
            types=["run_queued", "node_retry_scheduled"],  # not node_execute_before
            stream=stream.name,
            subject_prefix=stream.subject_prefix,
            out=out,
            stop=stop,
        )
    )
    await asyncio.sleep(0.3)  # the consumer exists before the next events are published
    later = await write_runs(store, runs=3, events_per_run=3)
    await wait_relayed([relay], store)
    deadline = time.monotonic() + 5
    while len(out.getvalue().splitlines()) < 3 and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
    await asyncio.sleep(0.2)  # nothing more may arrive
    stop.set()
    assert await asyncio.wait_for(task, 5) == 3
    runs = {str(e.run_id).replace("-", "")[-8:] for e in later}
    lines = out.getvalue().splitlines()
    assert {line.split()[2] for line in lines} == runs
    assert all(" #0 run_queued version v" in line for line in lines)


# -- the example subscriber


async def _finished_runs(store: EventStore, n: int) -> list[RawEnvelope]:
    """``n`` runs whose last event is run_finished; returns the run_finished envelopes."""

    async def one(i: int) -> RawEnvelope:
        run = uuid.uuid4()
        events = await store.append(
            run,
            [RunQueued(workflow_version="v1"), RunStarted(worker_id="w"), RunFinished(status="succeeded")],
            0,
            tenant="default",
            workflow_id=f"wf-{i % 3}",
        )
        return events[-1]

    return list(await asyncio.gather(*[one(i) for i in range(n)]))


def _subscriber(stream: StreamTarget, nats_url: str, tmp: Path, durable: str, *extra: str) -> list[str]:
    return [
        sys.executable,
        str(SUBSCRIBER),
        "--nats-url",
        nats_url,
        "--stream",
        stream.name,
        "--subject",
        f"{stream.subject_prefix}.*.*.*.run_finished",
        "--durable",
        durable,
        "--db",
        str(tmp / "subscriber.sqlite3"),
        "--out",
        str(tmp / "finished.tsv"),
        "--fetch-timeout",
        "0.2",
        "--ack-wait-seconds",  # messages the killed run had fetched come back quickly
        "1",
        *extra,
    ]


async def _run(cmd: list[str], timeout: float = 30) -> tuple[int, str]:
    """Run to completion without blocking the loop (the relay and NATS client live on it)."""
    proc = await asyncio.create_subprocess_exec(*cmd, stderr=asyncio.subprocess.PIPE)
    try:
        _, stderr = await asyncio.wait_for(proc.communicate(), timeout)
    except TimeoutError:
        proc.kill()
        await proc.wait()
        raise
    assert proc.returncode is not None
    return proc.returncode, stderr.decode()


def _committed(db: Path) -> int:
    with contextlib.closing(sqlite3.connect(db)) as conn:
        try:
            return int(conn.execute("SELECT count(*) FROM processed_events").fetchone()[0])
        except sqlite3.OperationalError:  # not created yet
            return 0


def _lines(path: Path) -> list[str]:
    return path.read_text().splitlines() if path.exists() else []


async def test_example_subscriber_reacts_to_each_run_finished_exactly_once_across_a_kill(
    store: EventStore,
    nats_client: NATS,
    stream: StreamTarget,
    relay: Relay,
    nats_url: str,
    tmp_path: Path,
) -> None:
    finished = await _finished_runs(store, 24)
    await write_runs(store, runs=3, events_per_run=4)  # other event types: filtered out
    await wait_relayed([relay], store)
    out, db = tmp_path / "finished.tsv", tmp_path / "subscriber.sqlite3"

    # First run: slow effects (300 ms between appending and committing), killed with SIGKILL
    # while a batch's lines are in the file but not yet committed: the worst moment.
    first = await asyncio.create_subprocess_exec(
        *_subscriber(stream, nats_url, tmp_path, "notifier", "--batch", "4", "--effect-delay-ms", "300"),
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        deadline = time.monotonic() + 10
        while True:
            assert first.returncode is None, "the subscriber exited early"
            assert time.monotonic() < deadline, "the subscriber made no progress"
            committed = _committed(db)
            if committed >= 4 and len(_lines(out)) > committed:
                break
            await asyncio.sleep(0.01)
    finally:
        first.send_signal(signal.SIGKILL)
        await first.wait()
    committed_at_kill, lines_at_kill = _committed(db), len(_lines(out))
    assert 0 < committed_at_kill < lines_at_kill < len(finished), (committed_at_kill, lines_at_kill)

    # Second run: cuts the uncommitted lines, then finishes the stream (redeliveries included).
    code, stderr = await _run(_subscriber(stream, nats_url, tmp_path, "notifier", "--idle-exit-seconds", "3"))
    assert code == 0, stderr
    assert "recovered: removed" in stderr, stderr

    expected = sorted(str(e.event_id) for e in finished)
    lines = _lines(out)
    assert sorted(line.split("\t")[0] for line in lines) == expected
    by_id = {str(e.event_id): e for e in finished}
    for line in lines:
        event_id, run_id, tenant, workflow_id, status, _recorded_at, error = line.split("\t")
        event = by_id[event_id]
        assert (run_id, tenant, workflow_id, status, error) == (
            str(event.run_id),
            "default",
            event.workflow_id,
            "succeeded",
            "",
        )
    info = await nats_client.jetstream().consumer_info(stream.name, "notifier")
    assert (info.num_pending, info.num_ack_pending) == (0, 0), "every message was acked"

    # A new durable consumer with the same ledger gets every event again: all are duplicates,
    # acked without repeating the effect.
    code, stderr = await _run(
        _subscriber(stream, nats_url, tmp_path, "notifier-2", "--max-messages", str(len(finished)))
    )
    assert code == 0, stderr
    assert f"{len(finished)} messages, 0 new, {len(finished)} duplicates" in stderr, stderr
    assert _lines(out) == lines
    info = await nats_client.jetstream().consumer_info(stream.name, "notifier-2")
    assert (info.num_pending, info.num_ack_pending) == (0, 0)


async def test_example_subscriber_refuses_a_durable_with_another_filter(
    nats_client: NATS, stream: StreamTarget, nats_url: str, tmp_path: Path
) -> None:
    code, stderr = await _run(_subscriber(stream, nats_url, tmp_path, "picky", "--idle-exit-seconds", "0.2"))
    assert code == 0, stderr
    cmd = _subscriber(stream, nats_url, tmp_path, "picky", "--idle-exit-seconds", "0.2")
    cmd[cmd.index("--subject") + 1] = f"{stream.subject_prefix}.>"
    code, stderr = await _run(cmd)
    assert code != 0
    assert "choose another --durable" in stderr, stderr


def test_tail_cli_rejects_bad_option_values() -> None:
    from click.testing import CliRunner

    from service.cli.main import cli

    runner = CliRunner()
    for args, needle in (
        (["--workflow", "a.b"], "contains a dot"),
        (["--workflow", "a b"], "contains whitespace"),
        (["--run", "*"], "wildcard"),
        (["--run", "not-a-uuid"], "not a run id"),
        (["--type", "run_exploded"], "unknown event type 'run_exploded'"),
        (["--tenant", ">"], "wildcard"),
    ):
        result = runner.invoke(cli, ["--nats-url", "nats://127.0.0.1:1", "tail", *args])
        assert result.exit_code == 2, (args, result.output)
        assert needle in result.output, (args, result.output)


async def test_tail_cli_prints_live_and_exits_0_on_ctrl_c(
    store: EventStore, stream: StreamTarget, relay: Relay, nats_url: str
) -> None:
    events = await write_runs(store, runs=2, events_per_run=3)
    await wait_relayed([relay], store)
    run_id = events[0].run_id
    env = {
        **os.environ,
        "FLOWLEDGER_NATS_URL": nats_url,
        "FLOWLEDGER_NATS_STREAM": stream.name,
        "FLOWLEDGER_NATS_SUBJECT_PREFIX": stream.subject_prefix,
    }
    proc = await asyncio.create_subprocess_exec(
        FLOWLEDGER,
        "tail",
        "--tenant",
        "acme",
        "--run",
        str(run_id),
        "--from-start",
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    assert proc.stdout is not None and proc.stderr is not None
    try:
        lines = [(await asyncio.wait_for(proc.stdout.readline(), 15)).decode() for _ in range(3)]
    finally:
        proc.send_signal(signal.SIGINT)
        code = await asyncio.wait_for(proc.wait(), 10)
    stderr = (await proc.stderr.read()).decode()
    assert code == 0, stderr
    assert "Traceback" not in stderr, stderr
    assert [line.split()[3:5] for line in lines] == [
        ["#0", "run_queued"],
        ["#1", "node_execute_before"],
        ["#2", "node_execute_before"],
    ]
    assert await proc.stdout.read() == b""  # nothing of the other run


async def test_tail_cli_names_a_missing_stream(nats_url: str) -> None:
    env = {**os.environ, "FLOWLEDGER_NATS_URL": nats_url, "FLOWLEDGER_NATS_STREAM": "NO_SUCH_STREAM"}
    proc = await asyncio.create_subprocess_exec(
        FLOWLEDGER,
        "tail",
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    _, stderr = await asyncio.wait_for(proc.communicate(), 15)
    assert proc.returncode == 2
    assert b"stream NO_SUCH_STREAM does not exist" in stderr, stderr
    assert b"Traceback" not in stderr


# -- pure parts of tail


def test_subject_filters_from_options() -> None:
    run = uuid.uuid4()
    assert subject_filters("p.events") == ["p.events.default.*.*.*"]
    assert subject_filters("p.events", tenant="acme", workflow="wf-1", run=str(run).upper()) == [
        f"p.events.acme.wf-1.{run}.*"
    ]
    assert subject_filters("p.events", types=["run_finished", "run_cancelled", "run_finished"]) == [
        "p.events.default.*.*.run_finished",
        "p.events.default.*.*.run_cancelled",
    ]
    for kwargs, option in (
        ({"tenant": ""}, "--tenant"),
        ({"workflow": "a.b"}, "--workflow"),
        ({"workflow": "x" * 65}, "--workflow"),
        ({"run": "12345"}, "--run"),
        ({"types": ["run_finished", ">"]}, "--type"),
    ):
        with pytest.raises(TailOptionError) as info:
            subject_filters("p.events", **kwargs)
        assert info.value.option == option


def _envelope(kind: str, data: dict[str, Any], seq: int = 3) -> dict[str, Any]:
    return {
        "event_id": str(uuid.uuid4()),
        "run_id": "01900000-0000-7000-8000-0000deadbeef",
        "seq": seq,
        "type": kind,
        "workflow_id": "orders",
        "recorded_at": "2024-05-01T12:00:00.123456Z",
        "data": {"type": kind, **data},
    }


def test_format_line_is_one_readable_line_per_event() -> None:
    failed = _envelope(
        "node_execute_after",
        {
            "node_id": "fetch",
            "node_type": "http",
            "status": "failed",
            "duration_ms": 12.4,
            "error": {"kind": "timeout", "message": "no answer\nafter 2 s"},
        },
    )
    assert format_line(failed, {}) == (
        "2024-05-01T12:00:00.123Z orders deadbeef #3 node_execute_after "
        "fetch failed in 12 ms error timeout: no answer\\nafter 2 s"
    )
    finished = _envelope("run_finished", {"status": "succeeded", "duration_ms": 840.0}, seq=9)
    assert format_line(finished, None).endswith("#9 run_finished succeeded in 840 ms")
    future = _envelope("run_teleported", {"where": "mars"})
    assert format_line(future, None).endswith("#3 run_teleported")
    trimmed = _envelope(
        "node_execute_after_data",
        {
            "trimmed": True,
            "size_bytes": 3 * 1024 * 1024,
            "sha256": "ab" * 32,
            "events_url": "/v1/runs/r/events?after_seq=2&limit=1",
            "node_id": "big",
        },
    )
    line = format_line(trimmed, {"Flowledger-Trimmed": "true"}, api_url="http://127.0.0.1:8000/")
    assert line.endswith(
        "node_execute_after_data big [trimmed: 3.0 MiB body not sent on NATS; "
        "full event at http://127.0.0.1:8000/v1/runs/r/events?after_seq=2&limit=1]"
    )
