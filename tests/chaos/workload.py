"""The drill's workload: four workflows that leave runs in different states when a fault hits
(between noop steps, in a short delay held in memory or a long one parked, between failed
attempts of a retried node, waiting for a signal), and the clients that start the runs, signal
them and follow some of them live, through whichever instance answers.

Every request is retried on another instance until it succeeds: a run is started with an
idempotency key of its own (``chaos-<seed>-<i>``), so a retry after a lost answer never starts
it twice; a signal is retried until the run's log shows it was resumed.
"""

from __future__ import annotations

import asyncio
import itertools
import random
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any
from uuid import UUID

import httpx

SPECS: list[dict[str, Any]] = [
    {
        "id": "chaos-steps",
        "nodes": [{"id": "a", "type": "noop"}, {"id": "b", "type": "noop"}, {"id": "c", "type": "noop"}],
        "edges": [{"from": "a", "to": "b"}, {"from": "b", "to": "c"}],
    },
    {  # b is held in memory (shorter than the 2 s park-after), c is parked
        "id": "chaos-delays",
        "nodes": [
            {"id": "a", "type": "noop"},
            {"id": "b", "type": "delay", "config": {"ms": 800}},
            {"id": "c", "type": "delay", "config": {"ms": 3000}},
            {"id": "d", "type": "noop"},
        ],
        "edges": [
            {"from": "a", "to": "b"},
            {"from": "a", "to": "c"},
            {"from": "b", "to": "d"},
            {"from": "c", "to": "d"},
        ],
    },
    {  # fails twice, succeeds on its third attempt (an attempt interrupted by a crash is one more)
        "id": "chaos-retry",
        "nodes": [
            {
                "id": "flaky",
                "type": "fail",
                "config": {"times": 2},
                "retry": {"max_attempts": 8, "initial_backoff_ms": 300, "multiplier": 1},
            },
            {"id": "after", "type": "noop"},
        ],
        "edges": [{"from": "flaky", "to": "after"}],
    },
    {
        "id": "chaos-signal",
        "nodes": [
            {"id": "ask", "type": "wait", "config": {"signal": "go"}},
            {"id": "after", "type": "transform", "config": {"expression": "nodes.ask"}},
        ],
        "edges": [{"from": "ask", "to": "after"}],
    },
]
NODES: dict[str, set[str]] = {spec["id"]: {n["id"] for n in spec["nodes"]} for spec in SPECS}
"""Each workflow's nodes: every one must succeed exactly once."""
MIX = {"chaos-steps": 4, "chaos-delays": 3, "chaos-retry": 2, "chaos-signal": 2}

RETRY_PAUSE = 0.5
FOLLOW_EVERY = 10
"""One run in this many is also followed live over SSE, from an instance that did not start it."""


def choose_workflows(seed: int, runs: int) -> list[str]:
    """The workflow of each run, drawn from ``seed``."""
    rng = random.Random(seed * 7919 + 1)
    return rng.choices(list(MIX), list(MIX.values()), k=runs)


@dataclass
class Started:
    index: int
    workflow_id: str
    key: str
    run_id: UUID
    attempts: int
    """Requests it took (more than one: an instance was down or answered 5xx)."""


@dataclass
class Followed:
    """A run followed over SSE: the seqs received, across every reconnection."""

    run_id: UUID
    seqs: list[int] = field(default_factory=list)
    reconnects: int = 0
    ended: bool = False


@dataclass
class WorkloadState:
    started: dict[int, Started] = field(default_factory=dict)
    rejected: list[str] = field(default_factory=list)
    """Answers that are not a retryable failure and not a success: each one is a violation."""
    retried_requests: Counter[str] = field(default_factory=Counter)
    failures: Counter[str] = field(default_factory=Counter)
    """Answers that made a request go to another instance: ``"503"``, ``"500"``, ``"no answer"``..."""
    server_errors: list[str] = field(default_factory=list)
    """The 500 answers (method, path, body): the service must say 503 when a dependency is down."""
    signalled: set[UUID] = field(default_factory=set)
    followed: dict[UUID, Followed] = field(default_factory=dict)


class Workload:
    def __init__(self, base_urls: list[str], headers: dict[str, str], seed: int, runs: int) -> None:
        self.base_urls = base_urls
        self.headers = headers
        self.seed = seed
        self.runs = runs
        self.workflows = choose_workflows(seed, runs)
        self.state = WorkloadState()
        self._http = httpx.AsyncClient(headers=headers, timeout=httpx.Timeout(10.0, connect=3.0))
        self._tasks: set[asyncio.Task[None]] = set()

    async def close(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self._http.aclose()

    async def register(self) -> None:
        for spec in SPECS:
            response = await self._request(0, "POST", "/v1/workflows", json=spec, label="register")
            assert response.status_code in (200, 201), response.text

    async def start_all(self, window: float) -> None:
        """Start every run, evenly spread over ``window`` seconds; returns once all are started."""
        t0 = time.monotonic()
        pending: list[asyncio.Task[None]] = []
        for i in range(self.runs):
            await asyncio.sleep(max(0.0, t0 + i * window / self.runs - time.monotonic()))
            pending.append(asyncio.create_task(self._start_one(i)))
        await asyncio.gather(*pending)

    async def wait_side_tasks(self, timeout: float) -> list[str]:
        """Wait for signals and followers to finish; returns what did not, one line each."""
        if self._tasks:
            await asyncio.wait(set(self._tasks), timeout=timeout)
        stuck = []
        for run_id, followed in self.state.followed.items():
            if not followed.ended:
                stuck.append(f"stream of run {run_id} not ended (seqs received: {len(followed.seqs)})")
        signal_runs = {s.run_id for s in self.state.started.values() if s.workflow_id == "chaos-signal"}
        for run_id in sorted(signal_runs - self.state.signalled):
            stuck.append(f"run {run_id} never signalled")
        return stuck

    # -- one run

    async def _start_one(self, i: int) -> None:
        workflow_id = self.workflows[i]
        key = f"chaos-{self.seed}-{i}"
        body = {"inputs": {"i": i}, "idempotency_key": key}
        response = await self._request(
            i, "POST", f"/v1/workflows/{workflow_id}/runs", json=body, label="start"
        )
        if response.status_code != 202:
            self.state.rejected.append(f"start of run {i}: {response.status_code} {response.text[:300]}")
            return
        run_id = UUID(response.json()["run_id"])
        attempts = self.state.retried_requests[f"start-{i}"] + 1
        self.state.started[i] = Started(i, workflow_id, key, run_id, attempts)
        if workflow_id == "chaos-signal":
            self._spawn(self._signal(i, run_id))
        if i % FOLLOW_EVERY == 0:
            self._spawn(self._follow(i + 1, run_id))

    async def _signal(self, i: int, run_id: UUID) -> None:
        """Send signal ``go`` until a run_resumed for it is in the run's log."""
        await asyncio.sleep(1.0)
        for turn in itertools.count(i):
            response = await self._request(
                turn, "POST", f"/v1/runs/{run_id}/signals/go", json={"payload": {"i": i}}, label="signal"
            )
            if response.status_code == 202:
                break
            if response.status_code != 409:
                self.state.rejected.append(
                    f"signal to run {run_id}: {response.status_code} {response.text[:300]}"
                )
                return
            # Not waiting: not there yet, or an earlier signal (whose answer was lost) resumed it.
            if await self._was_resumed(turn, run_id):
                break
            await asyncio.sleep(RETRY_PAUSE)
        self.state.signalled.add(run_id)

    async def _was_resumed(self, turn: int, run_id: UUID) -> bool:
        response = await self._request(turn, "GET", f"/v1/runs/{run_id}/events", label="events")
        if response.status_code != 200:
            return False
        events = response.json()
        items = events["items"] if isinstance(events, dict) else events
        return any(e["type"] == "run_resumed" and e["data"].get("signal") == "go" for e in items)

    async def _follow(self, turn: int, run_id: UUID) -> None:
        """Read the run's SSE stream to its end, resuming with Last-Event-ID on the next instance
        after every disconnection."""
        followed = self.state.followed.setdefault(run_id, Followed(run_id))
        for instance in itertools.count(turn):
            url = f"{self.base_urls[instance % len(self.base_urls)]}/v1/runs/{run_id}/stream"
            headers = {"Last-Event-ID": str(followed.seqs[-1])} if followed.seqs else {}
            event = ""
            try:
                async with self._http.stream(
                    "GET", url, headers=headers, timeout=httpx.Timeout(10.0, read=30.0)
                ) as response:
                    if response.status_code == 200:
                        async for line in response.aiter_lines():
                            if line.startswith("id:"):
                                followed.seqs.append(int(line.split(":", 1)[1]))
                            elif line.startswith("event:"):
                                event = line.split(":", 1)[1].strip()
                                if event in ("run_finished", "run_cancelled"):
                                    followed.ended = True
                    if followed.ended:
                        return
            except (httpx.HTTPError, ValueError):
                pass
            followed.reconnects += 1
            await asyncio.sleep(RETRY_PAUSE)

    # -- requests

    def _spawn(self, coro: Any) -> None:
        task = asyncio.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _request(
        self, turn: int, method: str, path: str, *, label: str, **kwargs: Any
    ) -> httpx.Response:
        """Send the request to instance ``turn`` (round-robin), then the next ones, until an answer
        that is not a failure of the instance (connection error, timeout, 5xx)."""
        for attempt in itertools.count():
            base = self.base_urls[(turn + attempt) % len(self.base_urls)]
            try:
                response = await self._http.request(method, base + path, **kwargs)
                if response.status_code < 500 and response.status_code != 429:
                    return response
                self.state.failures[str(response.status_code)] += 1
                if response.status_code == 500:
                    self.state.server_errors.append(f"{method} {path}: 500 {response.text[:200]}")
            except httpx.HTTPError as exc:
                self.state.failures[
                    "no answer" if isinstance(exc, httpx.TransportError) else type(exc).__name__
                ] += 1
            self.state.retried_requests[label] += 1
            if label == "start":
                self.state.retried_requests[f"start-{turn}"] += 1
            await asyncio.sleep(
                RETRY_PAUSE if attempt % len(self.base_urls) == len(self.base_urls) - 1 else 0.05
            )
        raise AssertionError("unreachable")
