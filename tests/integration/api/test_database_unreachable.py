"""While the database cannot be reached (its connections reset, new ones refused), a request is
answered 503 with Retry-After, as the contract's 503 says ("a dependency is down"), not 500; and
the same request succeeds once the database is back. The service reaches its database through a
proxy that drops connections on request (the chaos drill's)."""

from __future__ import annotations

import asyncio
import time
from urllib.parse import urlsplit

from tests.helpers.databases import scratch_database
from tests.helpers.faulty_proxy import FaultyProxy
from tests.helpers.servers import Servers
from tests.helpers.serving import serve_app
from tests.helpers.workflows import wf


async def test_a_request_while_the_database_is_unreachable_is_a_503_then_succeeds(servers: Servers) -> None:
    async with scratch_database(servers.database_url, prefix="unreachable") as url:
        target = urlsplit(url)
        assert target.hostname is not None and target.port is not None
        proxy = await FaultyProxy(target.hostname, target.port).start()
        try:
            proxied = url.replace(f"{target.hostname}:{target.port}/", f"127.0.0.1:{proxy.port}/")
            # The API alone: what the background loops do meanwhile is not this test's subject.
            async with serve_app(
                servers,
                database_url=proxied,
                worker_enabled=False,
                relay_enabled=False,
                projections_enabled=False,
            ) as api:
                spec = wf("down", [{"id": "a", "type": "noop"}], [])
                assert (await api.post("/v1/workflows", json=spec)).status_code == 201
                proxy.drop(600)
                for response in (
                    await api.post("/v1/workflows/down/runs", json={}),
                    await api.get("/v1/runs"),
                ):
                    assert response.status_code == 503, response.text
                    assert response.headers["content-type"].startswith("application/problem+json")
                    assert response.headers["Retry-After"] == "1"
                    assert "database" in response.json()["detail"]
                proxy.heal()
                deadline = time.monotonic() + 30
                while (response := await api.post("/v1/workflows/down/runs", json={})).status_code == 503:
                    assert time.monotonic() < deadline, response.text
                    await asyncio.sleep(0.2)
                assert response.status_code == 202, response.text
        finally:
            await proxy.close()
