"""``tests.helpers.serving``: a test never runs against an app that did not become ready."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator

import pytest
from litestar import Litestar, MediaType, Response, get

from tests.helpers.serving import free_port, serve


@get("/ready", media_type=MediaType.JSON, sync_to_thread=False)
def never_ready() -> Response[dict[str, object]]:
    return Response({"ready": False, "error": "database unreachable"}, status_code=503)


@get("/ready", media_type=MediaType.JSON, sync_to_thread=False)
def ready() -> dict[str, bool]:
    return {"ready": True}


async def test_an_app_that_becomes_ready_is_served() -> None:
    async with serve(Litestar([ready]), free_port(), ready_timeout=5) as client:
        assert (await client.get("/ready")).json() == {"ready": True}


async def test_an_app_that_never_becomes_ready_fails_with_its_last_answer() -> None:
    with pytest.raises(
        AssertionError, match=r"did not answer 200 within 0.5 s; last: 503 .*database unreachable"
    ):
        async with serve(Litestar([never_ready]), free_port(), ready_timeout=0.5):
            pytest.fail("the test body ran against an app that is not ready")


async def test_an_app_whose_server_stops_fails_at_once() -> None:
    @contextlib.asynccontextmanager
    async def broken(_app: Litestar) -> AsyncIterator[None]:
        raise RuntimeError("cannot start")
        yield  # pragma: no cover

    with pytest.raises(AssertionError, match="stopped before it was ready"):
        async with serve(Litestar([ready], lifespan=[broken]), free_port(), ready_timeout=30):
            pytest.fail("the test body ran against an app that is not ready")
