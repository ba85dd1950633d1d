"""Fixtures for integration tests that talk to the service over real HTTP."""

from __future__ import annotations

from collections.abc import AsyncIterator

import httpx
import pytest

from tests.helpers.servers import Servers
from tests.helpers.serving import serve_app


@pytest.fixture(scope="module")
async def api(servers: Servers) -> AsyncIterator[httpx.AsyncClient]:
    async with serve_app(servers) as client:
        yield client
