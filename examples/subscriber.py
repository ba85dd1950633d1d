"""An external consumer of Flowledger's NATS events that reacts to each finished run exactly once.

Depends only on nats-py, msgspec and the standard library: copy it into your
own service and change ``effect_line`` (the side effect).

What it does: a durable JetStream pull consumer on the ``FLOWLEDGER`` stream,
filtered to ``flowledger.events.*.*.*.run_finished`` by default, fetches
messages in batches with explicit acks. For every ``run_finished`` event it
appends one line to an output file. JetStream delivers at least once (a crash
before the ack means redelivery), so exactly-once is built here:

- the event_id of every handled event is recorded in a small SQLite file in
  the same transaction as the side effect, and only then is the message
  acked; a redelivered message whose event_id is recorded is acked again
  without repeating the effect;
- the effect (appending to a file) is made part of that transaction: SQLite
  also records the output file's committed length, and on start any bytes
  past it (appended by a run that crashed before committing) are cut off, so
  the redelivered events write them again, once.

An effect outside your control (an HTTP call, an email) cannot join the
transaction: pass the event_id along as an idempotency key instead.

Run it against ``make run`` (which starts the service with an embedded
nats-server; its URL is in the service log line ``embedded_server``, and the
port in ``.flowledger/nats/port``)::

    .venv/bin/python examples/subscriber.py \\
        --nats-url nats://127.0.0.1:$(cat .flowledger/nats/port) \\
        --durable finished-runs --db finished.sqlite3 --out finished.log

    # in another shell: register and run a workflow, then watch finished.log
    .venv/bin/flowledger workflows add examples/retries.yaml
    .venv/bin/flowledger run retries --follow

Stop it with Ctrl-C (it finishes the batch at hand); start it again and it
resumes where the durable consumer left off. ``--max-messages`` and
``--idle-exit-seconds`` make it exit on its own (scripts and tests).
Run one process per --db file (a lock file refuses a second one).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import fcntl
import os
import signal
import sqlite3
import sys
import time
from pathlib import Path
from typing import Any, TextIO

import msgspec
import nats
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy
from nats.js.errors import NotFoundError

DEFAULT_SUBJECT = "flowledger.events.*.*.*.run_finished"


class Envelope(msgspec.Struct):
    """The fields of Flowledger's event envelope this consumer reads (others are ignored)."""

    event_id: str
    run_id: str
    seq: int
    type: str
    tenant: str
    workflow_id: str
    recorded_at: str
    data: dict[str, Any]


_decode_envelope = msgspec.json.Decoder(Envelope).decode

_SCHEMA = """
CREATE TABLE IF NOT EXISTS processed_events (
    event_id     TEXT PRIMARY KEY,
    run_id       TEXT NOT NULL,
    processed_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS output_files (
    path   TEXT PRIMARY KEY,
    length INTEGER NOT NULL  -- bytes of the file covered by committed transactions
);
"""


def effect_line(event: Envelope) -> str:
    """The side effect's output for one run_finished event: one tab-separated line."""
    if event.data.get("trimmed") is True:  # body too large for NATS: fetch events_url for all of it
        status, error = "unknown", f"body trimmed, see {event.data.get('events_url')}"
    else:
        status, error = str(event.data.get("status", "?")), str(event.data.get("error") or "")
    fields = [event.event_id, event.run_id, event.tenant, event.workflow_id, status, event.recorded_at, error]
    return "\t".join(f.replace("\t", " ").replace("\n", " ") for f in fields) + "\n"


class Ledger:
    """The SQLite dedupe record plus the output file it keeps consistent with."""

    def __init__(self, db_path: Path, out_path: Path, log: TextIO, effect_delay_s: float = 0.0) -> None:
        # Explicit BEGIN/COMMIT below; used from one worker thread at a time (asyncio.to_thread).
        self.db = sqlite3.connect(db_path, isolation_level=None, check_same_thread=False)
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA synchronous=FULL")
        self.db.executescript(_SCHEMA)
        self.out_key = str(out_path.resolve())
        self.out = open(out_path, "ab")  # kept open for the process lifetime
        self.log = log
        self.effect_delay_s = effect_delay_s
        self._recover()

    def _recover(self) -> None:
        """Cut output appended by a run that crashed before its transaction committed."""
        row = self.db.execute("SELECT length FROM output_files WHERE path = ?", (self.out_key,)).fetchone()
        committed = row[0] if row else 0
        size = os.fstat(self.out.fileno()).st_size
        if size > committed:
            self.out.truncate(committed)
            os.fsync(self.out.fileno())
            self.log.write(f"recovered: removed {size - committed} bytes of uncommitted output\n")
        elif size < committed:
            self.log.write(f"warning: {self.out_key} is shorter than recorded; continuing from its end\n")
            self.db.execute(
                "INSERT OR REPLACE INTO output_files (path, length) VALUES (?, ?)", (self.out_key, size)
            )

    def handle(self, events: list[Envelope]) -> int:
        """Record and apply a batch in one transaction; returns how many were new (not duplicates).

        When this returns, the effect and the event_ids are durable together.
        """
        self.db.execute("BEGIN IMMEDIATE")
        try:
            lines: list[bytes] = []
            for event in events:
                inserted = self.db.execute(
                    "INSERT OR IGNORE INTO processed_events (event_id, run_id, processed_at) VALUES (?, ?, ?)",
                    (event.event_id, event.run_id, time.time()),
                )
                if inserted.rowcount == 1:  # 0: already handled before a redelivery
                    lines.append(effect_line(event).encode())
            if lines:
                self.out.write(b"".join(lines))
                self.out.flush()
                os.fsync(self.out.fileno())  # the effect is durable before the commit that covers it
                self.db.execute(
                    "INSERT OR REPLACE INTO output_files (path, length) VALUES (?, ?)",
                    (self.out_key, self.out.tell()),
                )
            if self.effect_delay_s:  # --effect-delay-ms: widen the effect-to-commit window (demo)
                time.sleep(self.effect_delay_s)
            self.db.execute("COMMIT")
        except BaseException:
            self.db.execute("ROLLBACK")
            raise
        return len(lines)

    def close(self) -> None:
        self.out.close()
        self.db.close()


async def bind_consumer(nc: NATS, stream: str, subject: str, durable: str, ack_wait_s: float) -> Any:
    """Create the durable pull consumer (or reuse it as it is); refuse one whose filter differs."""
    js = nc.jetstream()
    try:
        info = await js.consumer_info(stream, durable)
    except NotFoundError:
        info = None
    if info is not None:
        existing = info.config.filter_subject or ",".join(info.config.filter_subjects or [])
        if existing != subject:
            raise SystemExit(
                f"durable consumer {durable!r} on {stream} filters {existing!r}, not {subject!r}; "
                "choose another --durable or delete it (nats consumer rm)"
            )
    config = ConsumerConfig(
        ack_policy=AckPolicy.EXPLICIT,
        deliver_policy=DeliverPolicy.ALL,  # a new consumer starts at the oldest event kept
        ack_wait=ack_wait_s,  # unacked messages (a crash) come back after this; we dedupe them
        max_ack_pending=1000,
    )
    return await js.pull_subscribe(subject, durable=durable, stream=stream, config=config)


async def consume(args: argparse.Namespace, log: TextIO) -> dict[str, int]:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    ledger = Ledger(args.db, args.out, log, args.effect_delay_ms / 1000)
    counts = {"messages": 0, "new": 0, "duplicates": 0, "invalid": 0}
    nc = await nats.connect(args.nats_url, name=f"flowledger-subscriber-{args.durable}")
    try:
        try:
            await nc.jetstream().stream_info(args.stream)
        except NotFoundError:
            raise SystemExit(
                f"stream {args.stream} not found at {args.nats_url}; is Flowledger running?"
            ) from None
        sub = await bind_consumer(nc, args.stream, args.subject, args.durable, args.ack_wait_seconds)
        last_message = time.monotonic()
        while not stop.is_set():
            if args.max_messages is not None and counts["messages"] >= args.max_messages:
                break
            if (
                args.idle_exit_seconds is not None
                and time.monotonic() - last_message >= args.idle_exit_seconds
            ):
                break
            want = args.batch
            if args.max_messages is not None:
                want = min(want, args.max_messages - counts["messages"])
            try:
                msgs: list[Msg] = await sub.fetch(want, timeout=args.fetch_timeout)
            except TimeoutError:  # nats-py raises its own or asyncio's: both are TimeoutError
                continue
            if not msgs:  # an expired pull request can also come back empty
                continue
            last_message = time.monotonic()
            events: list[Envelope] = []
            valid: list[Msg] = []
            for msg in msgs:
                try:
                    events.append(_decode_envelope(msg.data))
                    valid.append(msg)
                except msgspec.DecodeError as exc:
                    counts["invalid"] += 1
                    log.write(f"terminating undecodable message on {msg.subject}: {exc}\n")
                    await msg.term()  # never redelivered: it would fail the same way
            new = await asyncio.to_thread(ledger.handle, events) if events else 0
            for msg in valid:  # only after the transaction that covers them committed
                await msg.ack()
            counts["messages"] += len(msgs)
            counts["new"] += new
            counts["duplicates"] += len(events) - new
        await nc.flush()  # the last acks reach the server before we go
    finally:
        with contextlib.suppress(Exception):
            await nc.close()
        ledger.close()
    return counts


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n", 1)[0] if __doc__ else None)
    p.add_argument(
        "--nats-url",
        default=os.environ.get("FLOWLEDGER_NATS_URL", "nats://127.0.0.1:4222"),
        help="NATS server",
    )
    p.add_argument("--stream", default="FLOWLEDGER", help="JetStream stream (default: %(default)s)")
    p.add_argument("--subject", default=DEFAULT_SUBJECT, help="subject filter (default: %(default)s)")
    p.add_argument("--durable", default="run-finished-notifier", help="durable consumer name")
    p.add_argument("--db", type=Path, default=Path("subscriber.sqlite3"), help="SQLite dedupe file")
    p.add_argument(
        "--out", type=Path, default=Path("finished_runs.tsv"), help="output file (one line per event)"
    )
    p.add_argument("--batch", type=int, default=50, help="messages per fetch")
    p.add_argument(
        "--ack-wait-seconds",
        type=float,
        default=30.0,
        help="redeliver unacked messages after this long (set when the consumer is created)",
    )
    p.add_argument("--fetch-timeout", type=float, default=1.0, help="seconds a fetch waits for messages")
    p.add_argument("--max-messages", type=int, default=None, help="exit after this many messages")
    p.add_argument(
        "--idle-exit-seconds", type=float, default=None, help="exit after this long without messages"
    )
    p.add_argument(
        "--effect-delay-ms",
        type=float,
        default=0.0,
        help="sleep between the effect and its commit (to demonstrate crash recovery)",
    )
    args = p.parse_args(argv)
    if args.batch < 1:
        p.error("--batch must be at least 1")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    lock = open(f"{args.db}.lock", "w")  # held (locked) until the process exits
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        print(f"another subscriber is using {args.db}", file=sys.stderr)
        return 2
    counts = asyncio.run(consume(args, sys.stderr))
    print(
        f"done: {counts['messages']} messages, {counts['new']} new, "
        f"{counts['duplicates']} duplicates, {counts['invalid']} invalid",
        file=sys.stderr,
        flush=True,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
