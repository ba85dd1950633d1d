"""Client-side helpers for the HTTP API: problem details, waiting for a run to end, reading SSE."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import Any

import httpx

TERMINAL_TYPES = ("run_finished", "run_cancelled")


def assert_problem(response: httpx.Response, status: int) -> dict[str, Any]:
    """``response`` is an RFC 9457 problem document with ``status``; returns its body."""
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/problem+json")
    body: dict[str, Any] = response.json()
    assert body["status"] == status and body["title"] and body["detail"]
    return body


async def wait_ended(api: httpx.AsyncClient, run_id: str, timeout: float = 20.0) -> list[dict[str, Any]]:
    """The events of ``run_id`` (``GET /v1/runs/{id}/events``) once its last one ends the run."""
    deadline = time.monotonic() + timeout
    while True:
        items: list[dict[str, Any]] = (
            await api.get(f"/v1/runs/{run_id}/events", params={"limit": 1000})
        ).json()["items"]
        if items and items[-1]["type"] in TERMINAL_TYPES:
            return items
        if time.monotonic() > deadline:
            raise AssertionError(
                f"run {run_id} did not end within {timeout:g} s: {[e['type'] for e in items]}"
            )
        await asyncio.sleep(0.025)


async def sse(
    api: httpx.AsyncClient, path: str, *, last_event_id: str | None = None, take: int | None = None
) -> AsyncIterator[dict[str, Any]]:
    """Parsed SSE messages (id, event, data) until the server ends the stream or ``take`` were read."""
    headers = {"Last-Event-ID": last_event_id} if last_event_id is not None else {}
    async with api.stream("GET", path, headers=headers, timeout=30) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        assert (
            response.headers["cache-control"] == "no-cache" and response.headers["x-accel-buffering"] == "no"
        )
        message: dict[str, Any] = {}
        count = 0
        async for line in response.aiter_lines():
            if line == "":
                if "data" in message:
                    yield message
                    count += 1
                    if take is not None and count >= take:
                        return
                message = {}
            elif line.startswith(":"):
                continue
            else:
                field, _, value = line.partition(": ")
                message[field] = value
